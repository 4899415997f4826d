//! Links the system libraries that feature-gated backends call through FFI.
//!
//! The `pocketsphinx` feature's bindings in `src/stt/pocketsphinx.rs` call
//! Debian's libpocketsphinx and libsphinxbase, the `flite` feature's bindings
//! in `src/tts/flite.rs` call libflite and its slt voice, and the `piper`
//! feature's bindings in `src/tts/piper.rs` call libespeak-ng.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    // Cargo sets CARGO_FEATURE_<NAME> for each enabled feature of this crate.
    if std::env::var_os("CARGO_FEATURE_POCKETSPHINX").is_some() {
        link_pocketsphinx();
    }
    if std::env::var_os("CARGO_FEATURE_FLITE").is_some() {
        link_flite();
    }
    if std::env::var_os("CARGO_FEATURE_PIPER").is_some() {
        // Debian libespeak-ng-dev installs it on the default library path.
        println!("cargo:rustc-link-lib=dylib=espeak-ng");
    }
}

/// Emits the link lines for flite with the US English slt voice (Debian
/// flite1-dev, on the default library path). Each library refers to the
/// ones after it, and flite's signal processing needs libm.
fn link_flite() {
    for library in ["flite_cmu_us_slt", "flite_usenglish", "flite_cmulex", "flite", "m"] {
        println!("cargo:rustc-link-lib=dylib={library}");
    }
}

/// Emits the link lines for libpocketsphinx and libsphinxbase.
///
/// pkg-config reports the library folders. Without it the libraries are
/// assumed to be on the default search path, where Debian installs them.
fn link_pocketsphinx() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let from_pkg_config = std::process::Command::new("pkg-config")
        .args(["--libs-only-L", "pocketsphinx", "sphinxbase"])
        .output()
        .ok()
        .filter(|output| output.status.success());

    if let Some(output) = from_pkg_config {
        let flags = String::from_utf8_lossy(&output.stdout);
        for dir in flags.split_whitespace().filter_map(|f| f.strip_prefix("-L")) {
            println!("cargo:rustc-link-search=native={dir}");
        }
    } else {
        println!(
            "cargo:warning=pkg-config found no pocketsphinx/sphinxbase; linking from the default \
             library path (install libpocketsphinx-dev and libsphinxbase-dev if linking fails)"
        );
    }
    println!("cargo:rustc-link-lib=dylib=pocketsphinx");
    println!("cargo:rustc-link-lib=dylib=sphinxbase");
}
