//! The training binary: `autoresearch train`, `run` and `loop` build it and run it, once to train (the agent's
//! `train`) and once to evaluate (the harness's code, with the agent's `build` and `logits`).

fn main() {
    autoresearch_evaluate::main(train::train, train::build);
}
