#!/usr/bin/env bash
# A scripted agent for the research tests. Call k applies the k-th edit named in $AGENT_STATE/steps to the
# repository (the current folder) and writes its description where the loop asked. $1 is the prompt file.
# In worker k's worktree (.autoresearch/workers/k/tree) it keeps count-k, steps-k and prompt-k-<call>.md.
set -eu
prompt=$1
w=""
case $PWD in */workers/*/tree) w="-$(basename "$(dirname "$PWD")")" ;; esac
n=$(cat "$AGENT_STATE/count$w" 2>/dev/null || echo 0)
echo $((n + 1)) > "$AGENT_STATE/count$w"
step=$(sed -n "$((n + 1))p" "$AGENT_STATE/steps$w")
cp "$prompt" "$AGENT_STATE/prompt$w-$((n + 1)).md"
echo "call$w $((n + 1)): tried $step" >> "$AUTORESEARCH_NOTES"
file=train/train.rs
say() { echo "$1" > "$AUTORESEARCH_DESCRIPTION"; }
# Each edit first checks that the text it changes is there (fixed strings): an edit that silently did nothing
# would leave the test testing nothing.
need() {
    for text in "$@"; do
        grep -qF -- "$text" $file || { echo "agent.sh: $file has no '$text': it changed shape, update the test" >&2; exit 1; }
    done
}
train_fn='pub fn train(training: &Training) -> Result<Trained<Gpt>> {'
logits_fn='    fn logits(&self, inputs: &Tensor) -> Tensor {'
scalar_lr='scalar_lr: 0.0'
case $step in
improve)   # learning rates from 1% to 10% of the defaults
    need 'embedding_lr: 0.006,' 'unembedding_lr: 0.00004,' 'matrix_lr: 0.0004,' 'scalar_lr: 0.005,'
    sed -i 's/embedding_lr: 0.006,/embedding_lr: 0.06,/; s/unembedding_lr: 0.00004,/unembedding_lr: 0.0004,/; s/matrix_lr: 0.0004,/matrix_lr: 0.004,/; s/scalar_lr: 0.005,/scalar_lr: 0.05,/' $file
    say "learning rates up tenfold" ;;
regress)   need 'matrix_lr: 0.004,' 'embedding_lr: 0.06,'; sed -i 's/matrix_lr: 0.004,/matrix_lr: 0.0,/; s/embedding_lr: 0.06,/embedding_lr: 0.0,/' $file; say "freeze the matrices and embeddings" ;;
break)     need "$train_fn"; sed -i 's/^pub fn train(training: \&Training) -> Result<Trained<Gpt>> {$/pub fn train(training: \&Training) -> Result<Trained<Gpt>> {\n    let oops: u32 = "not a number";/' $file; say "a change that does not compile" ;;
fix)       grep -q "does not compile" "$prompt"; need 'let oops: u32' 'scalar_lr: 0.05,'; sed -i '/let oops: u32/d; s/scalar_lr: 0.05,/scalar_lr: 0.06,/' $file ;;
nofix)     grep -q "does not compile" "$prompt" ;;
panic)     need "$train_fn"; sed -i 's/^pub fn train(training: \&Training) -> Result<Trained<Gpt>> {$/pub fn train(training: \&Training) -> Result<Trained<Gpt>> {\n    panic!("boom");/' $file; say "panic at start" ;;
sleep)     need "$train_fn"; sed -i 's/^pub fn train(training: \&Training) -> Result<Trained<Gpt>> {$/pub fn train(training: \&Training) -> Result<Trained<Gpt>> {\n    std::thread::sleep(std::time::Duration::from_secs(3600));/' $file; say "hang" ;;
harness)   need "$scalar_lr"; echo "// an edit to the fixed harness" >> harness/src/lib.rs; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.07,/' $file; say "touch the harness" ;;
good)      need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.045,/' $file; say "scalar lr 0.045" ;;
good2)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.035,/' $file; say "scalar lr 0.035" ;;
good3)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.025,/' $file; say "scalar lr 0.025" ;;
linger)    need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.015,/' $file; sleep 60; say "never finished" ;;
good4)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.055,/' $file; say "scalar lr 0.055" ;;
good5)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.065,/' $file; say "scalar lr 0.065" ;;
good6)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.085,/' $file; say "scalar lr 0.085" ;;
good7)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.095,/' $file; say "scalar lr 0.095" ;;
good8)     need "$scalar_lr"; sed -i -E 's/scalar_lr: 0\.0[0-9]*,/scalar_lr: 0.0125,/' $file; say "scalar lr 0.0125" ;;
await_rerun) # waits (up to 5 minutes) until a confirmation rerun begins (a new rerun log in the session's run
           # folders), then returns without a change, so that the loop takes the rerun still waiting
           runs="$(dirname "$AUTORESEARCH_NOTES")/runs"
           reruns() { find "$runs" -name 'rerun-*.log' | wc -l; }
           before=$(reruns)
           for _ in $(seq 1500); do [ "$(reruns)" -gt "$before" ] && break; sleep 0.2; done
           [ "$(reruns)" -gt "$before" ] || { echo "agent.sh: no rerun began in $runs after 5 minutes" >&2; exit 1; }
           ;;
late)      # waits (up to 5 minutes) for a second keep row in results.tsv (another worker's), then sets the default
           # learning rates in the file as this call found it: a change that grew from an older best than the one
           # it will be judged against
           results="$(dirname "$AUTORESEARCH_NOTES")/../results.tsv"
           keeps() { cut -f4 "$results" | grep -cx keep || true; }
           for _ in $(seq 1500); do [ "$(keeps)" -ge 2 ] && break; sleep 0.2; done
           [ "$(keeps)" -ge 2 ] || { echo "agent.sh: no second keep in $results after 5 minutes" >&2; exit 1; }
           need 'embedding_lr: 0.006,' 'unembedding_lr: 0.00004,' 'matrix_lr: 0.0004,' 'scalar_lr: 0.005,'
           sed -i 's/embedding_lr: 0.006,/embedding_lr: 0.6,/; s/unembedding_lr: 0.00004,/unembedding_lr: 0.004,/; s/matrix_lr: 0.0004,/matrix_lr: 0.04,/; s/scalar_lr: 0.005,/scalar_lr: 0.05,/' $file
           say "default learning rates, from the baseline" ;;
defaults)  # the default learning rates (ten times the "improve" ones), after a nap of 10 s in every training
    need 'embedding_lr: 0.06,' 'unembedding_lr: 0.0004,' 'matrix_lr: 0.004,' "$train_fn"
    sed -i 's/embedding_lr: 0.06,/embedding_lr: 0.6,/; s/unembedding_lr: 0.0004,/unembedding_lr: 0.004,/; s/matrix_lr: 0.004,/matrix_lr: 0.04,/' $file
    sed -i 's/^pub fn train(training: \&Training) -> Result<Trained<Gpt>> {$/pub fn train(training: \&Training) -> Result<Trained<Gpt>> {\n    std::thread::sleep(std::time::Duration::from_secs(10));/' $file
    say "default learning rates" ;;
nap)       need "$train_fn"; sed -i 's/^pub fn train(training: \&Training) -> Result<Trained<Gpt>> {$/pub fn train(training: \&Training) -> Result<Trained<Gpt>> {\n    std::thread::sleep(std::time::Duration::from_secs(30));/' $file
           echo "// nap$w" >> $file; say "a nap first" ;;
slow_eval) need "$logits_fn"; sed -i 's/^\(    fn logits(&self, inputs: &Tensor) -> Tensor {\)$/\1\n        std::thread::sleep(std::time::Duration::from_millis(500));/' $file
           grep -q 'from_millis(500)' $file; say "slow evaluation" ;;
nothing)   ;;
*)         echo "no step $((n + 1)) ($step)" >&2; exit 1 ;;
esac
