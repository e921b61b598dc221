pub mod aws_proxy;
pub mod ministack;
