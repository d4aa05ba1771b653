//! Run and task state machines: the states and the pure transition function.
