//! mirrorlog-perf: capacity planning reports from measured benchmark
//! results. The model is documented in docs/capacity.md.
//!
//! * `workload`: the TOML workload description and its checks.
//! * `measured`: the quantities read from `mirrorlog-bench` result files.
//! * `compress`: zstd ratio and speed measured on the workload's records.
//! * `model`: the formulas (pure functions).
//! * `plan`: the model applied to a workload; `validation`: the model
//!   against runs measured after the baseline; `report`: HTML, Markdown,
//!   JSON.

pub mod compress;
pub mod measured;
pub mod model;
pub mod plan;
pub mod report;
pub mod validation;
pub mod workload;
