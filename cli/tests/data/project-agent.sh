#!/usr/bin/env bash
# A scripted agent for the project tests. Call k runs the k-th line of $AGENT_STATE/steps (worker w's: steps-w),
# `DESCRIPTION<tab>COMMAND`, in the project's tree (the current folder): the command edits the files, the
# description goes where the loop asked. An edit that changes nothing fails the call: it would leave the test
# testing nothing. $1 is the prompt file, kept as prompt<-w>-<k>.md.
set -eu
prompt=$1
w=""
case $PWD in */workers/*/tree) w="-$(basename "$(dirname "$PWD")")" ;; esac
n=$(cat "$AGENT_STATE/count$w" 2>/dev/null || echo 0)
echo $((n + 1)) > "$AGENT_STATE/count$w"
cp "$prompt" "$AGENT_STATE/prompt$w-$((n + 1)).md"
line=$(sed -n "$((n + 1))p" "$AGENT_STATE/steps$w")
[ -n "$line" ] || { echo "project-agent.sh: no step $((n + 1))" >&2; exit 1; }
description=${line%%$'\t'*}
command=${line#*$'\t'}
before=$(git status --porcelain; git diff | md5sum)
bash -c "$command"
after=$(git status --porcelain; git diff | md5sum)
[ "$before" != "$after" ] || { echo "project-agent.sh: '$command' changed nothing" >&2; exit 1; }
echo "$description" > "$AUTORESEARCH_DESCRIPTION"
