pub mod node_sim;
