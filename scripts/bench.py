"""Times the Python packages the harness is measured against, on the same input as `autoresearch bench`.

rustbpe (tokenizer training) and tiktoken (encoding, 1 and 2 threads). Prints one `name: value` line each,
and checks that rustbpe's ranks equal the ones `autoresearch bench tokenizer --save` wrote.
Usage: python3 bench.py TEXT_DIR VOCAB OUR_TOKENIZER_DIR REPEAT
"""
import base64
import pathlib
import sys
import time

import rustbpe
import tiktoken

DOC_CHARS = 10_000
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


def documents(root):
    """Blocks of lines separated by blank lines, from the .txt files in path order (as the harness reads them)."""
    docs = []
    for path in sorted(pathlib.Path(root).rglob("*.txt")):
        block = []
        for line in path.read_text(encoding="utf-8").splitlines() + [""]:
            if line.strip():
                block.append(line)
            elif block:
                docs.append("\n".join(block))
                block = []
    return docs


def main():
    text_dir, vocab, ours, repeat = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
    docs = documents(text_dir)

    t0 = time.perf_counter()
    tok = rustbpe.Tokenizer()
    # Each document cut to its first 10,000 characters, as the original's tokenizer training (and ours) does.
    tok.train_from_iterator((d[:DOC_CHARS] for d in docs), vocab - 4, pattern=SPLIT_PATTERN)
    print(f"rustbpe_train_seconds: {time.perf_counter() - t0:.3f}")
    theirs = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    lines = ours.joinpath("ranks.tiktoken").read_text().split()
    mine = {base64.b64decode(lines[i]): int(lines[i + 1]) for i in range(0, len(lines), 2)}
    print(f"rustbpe_ranks_identical: {'yes' if mine == theirs else 'NO'}")

    enc = tiktoken.Encoding(name="bench", pat_str=SPLIT_PATTERN, mergeable_ranks=mine,
                            special_tokens={f"<|reserved_{i}|>": len(mine) + i for i in range(4)})
    nbytes = sum(len(d.encode()) for d in docs)
    for threads in (1, 2):
        t0 = time.perf_counter()
        ntok = 0
        for _ in range(repeat):
            ntok += sum(len(ids) for ids in enc.encode_ordinary_batch(docs, num_threads=threads))
        s = time.perf_counter() - t0
        print(f"tiktoken_threads_{threads}: {nbytes * repeat / s / 1e6:.1f} MB/s, {ntok / s / 1e6:.2f}M tokens/s")


main()
