pub mod cpu;
pub mod fixture;
pub mod netns;
pub mod packet;
pub mod storm;
pub mod topology;
