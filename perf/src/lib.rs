pub mod bench;
pub mod demo;
pub mod l4_bench;
pub mod node_sim;
pub mod tls_ws;
pub mod wss_load;
