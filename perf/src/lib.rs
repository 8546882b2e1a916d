pub mod bench;
pub mod demo;
pub mod node_sim;
pub mod tls_ws;
pub mod wss_load;
