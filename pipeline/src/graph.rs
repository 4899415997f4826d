//! Building and validating a graph of stages.
//!
//! ```
//! use std::time::Duration;
//! use mentis_pipeline::{EdgeConfig, GraphBuilder, PrivacyPolicy, PrivacyTier, StageName};
//! use mentis_pipeline::basic::{PassThrough, ToneSource, CountingSink};
//! use mentis_pipeline::AudioFormat;
//!
//! let format = AudioFormat::mono_i16(16_000);
//! let name = |text: &str| StageName::new(text).expect("valid name");
//! let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
//! let source = graph.add(ToneSource::new(name("tone"), format, Duration::from_millis(20), 10));
//! let middle = graph.add(PassThrough::new(name("pass"), format.into()));
//! let (sink, _count) = CountingSink::new(name("sink"));
//! let sink = graph.add(sink);
//! graph.connect(source, middle, EdgeConfig::lossless(8));
//! graph.connect(middle, sink, EdgeConfig::lossless(8));
//! let pipeline = graph.build().expect("a valid graph");
//! assert_eq!(pipeline.stage_names().len(), 3);
//! ```

use std::collections::HashSet;

use crate::edge::EdgeConfig;
use crate::format::PortFormat;
use crate::id::StageName;
use crate::privacy::{PrivacyError, PrivacyPolicy};
use crate::runtime::Pipeline;
use crate::stage::{Stage, StageSpec};

/// A stage's position in a [`GraphBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(pub(crate) usize);

pub(crate) struct Node {
    pub(crate) stage: Box<dyn Stage>,
    pub(crate) spec: StageSpec,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct EdgeSpec {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) config: EdgeConfig,
}

/// An error that prevents a graph from running.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GraphError {
    /// The graph has no stages.
    #[error("the graph has no stages")]
    Empty,
    /// Two stages share a name.
    #[error("two stages are named {name}; give each stage a unique name")]
    DuplicateName {
        /// The repeated name.
        name: StageName,
    },
    /// An edge joins formats that do not match.
    #[error("stage {from} emits {output} but stage {to} accepts {input}; insert {converter} between them")]
    FormatMismatch {
        /// The upstream stage.
        from: StageName,
        /// The downstream stage.
        to: StageName,
        /// The format the upstream stage emits.
        output: PortFormat,
        /// The format the downstream stage accepts.
        input: PortFormat,
        /// The kind of stage that converts one into the other.
        converter: &'static str,
    },
    /// A stage's input port has no incoming edge.
    #[error("stage {stage} accepts {input} but nothing is connected to it")]
    UnconnectedInput {
        /// The stage.
        stage: StageName,
        /// The format it accepts.
        input: PortFormat,
    },
    /// A stage's output port has no outgoing edge.
    #[error("stage {stage} emits {output} but it is connected to nothing; connect it or end the chain with a sink")]
    UnconnectedOutput {
        /// The stage.
        stage: StageName,
        /// The format it emits.
        output: PortFormat,
    },
    /// An edge leaves a stage without an output port or enters one without an input port.
    #[error("stage {stage} has no {port} port, so it cannot be connected there")]
    MissingPort {
        /// The stage.
        stage: StageName,
        /// "input" or "output".
        port: &'static str,
    },
    /// The same pair of stages is connected twice.
    #[error("stages {from} and {to} are connected twice")]
    DuplicateEdge {
        /// The upstream stage.
        from: StageName,
        /// The downstream stage.
        to: StageName,
    },
    /// The edges form a cycle.
    #[error("the stages {stages:?} form a cycle; a pipeline must flow one way")]
    Cycle {
        /// The stages on or behind the cycle.
        stages: Vec<StageName>,
    },
    /// An edge configuration is unusable.
    #[error("the edge from {from} to {to} is misconfigured: {problem}")]
    InvalidEdge {
        /// The upstream stage.
        from: StageName,
        /// The downstream stage.
        to: StageName,
        /// The field that is wrong.
        problem: &'static str,
    },
    /// A node id from another builder was used.
    #[error("node id {index} does not belong to this graph")]
    UnknownNode {
        /// The id's index.
        index: usize,
    },
    /// A stage sends data further than the tier allows.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}

/// Collects stages and edges, then validates them into a [`Pipeline`].
pub struct GraphBuilder {
    policy: PrivacyPolicy,
    nodes: Vec<Node>,
    edges: Vec<EdgeSpec>,
    unknown_node: Option<usize>,
}

impl std::fmt::Debug for GraphBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.nodes.iter().map(|node| node.spec.name.as_str()).collect();
        f.debug_struct("GraphBuilder").field("tier", &self.policy.tier()).field("stages", &names).finish()
    }
}

impl GraphBuilder {
    /// Starts an empty graph governed by `policy`.
    pub fn new(policy: PrivacyPolicy) -> Self {
        GraphBuilder { policy, nodes: Vec::new(), edges: Vec::new(), unknown_node: None }
    }

    /// Adds a stage and returns its id.
    pub fn add(&mut self, stage: impl Stage) -> NodeId {
        let stage: Box<dyn Stage> = Box::new(stage);
        let spec = stage.spec();
        self.nodes.push(Node { stage, spec });
        NodeId(self.nodes.len() - 1)
    }

    /// Connects the output of `from` to the input of `to` with an edge of the
    /// given configuration. Connecting one output to several inputs fans out
    /// (every frame is cloned to each); several outputs into one input fan in.
    pub fn connect(&mut self, from: NodeId, to: NodeId, config: EdgeConfig) -> &mut Self {
        for node in [from, to] {
            if node.0 >= self.nodes.len() {
                self.unknown_node.get_or_insert(node.0);
            }
        }
        self.edges.push(EdgeSpec { from: from.0, to: to.0, config });
        self
    }

    /// Adds stages and connects each to the next with `config`; returns their ids.
    pub fn chain(&mut self, stages: Vec<Box<dyn Stage>>, config: EdgeConfig) -> Vec<NodeId> {
        let ids: Vec<NodeId> = stages.into_iter().map(|stage| self.add(stage)).collect();
        for pair in ids.windows(2) {
            self.connect(pair[0], pair[1], config);
        }
        ids
    }

    /// Validates the graph: unique names, known nodes, usable edge
    /// configurations, ports that exist and are connected, matching formats on
    /// every edge, no cycles, and every stage's egress within the privacy tier.
    pub fn build(self) -> Result<Pipeline, GraphError> {
        self.validate()?;
        Ok(Pipeline::new(self.policy, self.nodes, self.edges))
    }

    fn validate(&self) -> Result<(), GraphError> {
        if self.nodes.is_empty() {
            return Err(GraphError::Empty);
        }
        if let Some(index) = self.unknown_node {
            return Err(GraphError::UnknownNode { index });
        }
        let name = |index: usize| self.nodes[index].spec.name.clone();

        let mut names = HashSet::new();
        for node in &self.nodes {
            if !names.insert(node.spec.name.clone()) {
                return Err(GraphError::DuplicateName { name: node.spec.name.clone() });
            }
        }

        let mut pairs = HashSet::new();
        for edge in &self.edges {
            let (from, to) = (&self.nodes[edge.from].spec, &self.nodes[edge.to].spec);
            if let Err(problem) = edge.config.validate() {
                return Err(GraphError::InvalidEdge { from: name(edge.from), to: name(edge.to), problem });
            }
            if !pairs.insert((edge.from, edge.to)) {
                return Err(GraphError::DuplicateEdge { from: name(edge.from), to: name(edge.to) });
            }
            if from.output == PortFormat::None {
                return Err(GraphError::MissingPort { stage: name(edge.from), port: "output" });
            }
            if to.input == PortFormat::None {
                return Err(GraphError::MissingPort { stage: name(edge.to), port: "input" });
            }
            if !from.output.feeds(&to.input) {
                return Err(GraphError::FormatMismatch {
                    from: name(edge.from),
                    to: name(edge.to),
                    output: from.output,
                    input: to.input,
                    converter: from.output.converter_to(&to.input),
                });
            }
        }

        for (index, node) in self.nodes.iter().enumerate() {
            let has_input = self.edges.iter().any(|edge| edge.to == index);
            let has_output = self.edges.iter().any(|edge| edge.from == index);
            if node.spec.input != PortFormat::None && !has_input {
                return Err(GraphError::UnconnectedInput { stage: name(index), input: node.spec.input });
            }
            if node.spec.output != PortFormat::None && !has_output {
                return Err(GraphError::UnconnectedOutput { stage: name(index), output: node.spec.output });
            }
        }

        self.check_acyclic()?;

        for node in &self.nodes {
            self.policy.check(&node.spec.name, &node.spec.egress)?;
        }
        Ok(())
    }

    /// Kahn's algorithm: stages never freed of incoming edges are on or behind a cycle.
    fn check_acyclic(&self) -> Result<(), GraphError> {
        let mut incoming = vec![0_usize; self.nodes.len()];
        for edge in &self.edges {
            incoming[edge.to] += 1;
        }
        let mut ready: Vec<usize> = (0..self.nodes.len()).filter(|&index| incoming[index] == 0).collect();
        let mut visited = 0;
        while let Some(index) = ready.pop() {
            visited += 1;
            for edge in self.edges.iter().filter(|edge| edge.from == index) {
                incoming[edge.to] -= 1;
                if incoming[edge.to] == 0 {
                    ready.push(edge.to);
                }
            }
        }
        if visited == self.nodes.len() {
            return Ok(());
        }
        let stages = (0..self.nodes.len())
            .filter(|&index| incoming[index] > 0)
            .map(|index| self.nodes[index].spec.name.clone())
            .collect();
        Err(GraphError::Cycle { stages })
    }
}
