pub mod node_sim;
pub mod proxy_bench;
