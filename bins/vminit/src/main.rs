//! `vminit`: firebuild's guest agent (PID 1). Being written.

fn main() {}
