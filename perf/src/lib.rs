pub mod bench;
pub mod demo;
pub mod node_sim;
pub mod proxy_bench;
