//! Everything Kubernetes.
pub mod election;
pub mod operator;
pub mod ownership;
pub mod pod;
pub mod replicas;
pub mod runtime;
