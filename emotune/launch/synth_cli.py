"""`emotune synth OUT_DIR`: write the embedded demo's synthetic data, tasks' files and tokenizer.

The language has an exactly known distribution (emotune.synthetic.language): the oracle metrics of the
paper's Table 2 are computed against it. Nothing is downloaded; the same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

from emotune.errors import ArgumentParser


def main(argv: list[str]) -> int:
    ap = ArgumentParser(prog="emotune synth", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0, help="the base (pre-training) language")
    ap.add_argument("--shift-seed", type=int, default=None, help="the fine-tuning domain (default seed+100)")
    ap.add_argument("--n-pretrain", type=int, default=4000)
    ap.add_argument("--n-finetune", type=int, default=2000)
    ap.add_argument("--n-valid", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--n-icl-index", type=int, default=400)
    ap.add_argument("--n-icl-test", type=int, default=700, help="ambiguous classification rows (~1.5-point standard error)")
    ap.add_argument("--vocab-size", type=int, default=768, help="sentencepiece vocabulary (one token per word)")
    ap.add_argument("--force", action="store_true", help="rewrite the data even if OUT_DIR/language.json exists")
    args = ap.parse_args(argv)
    from emotune.atomic import read_json
    from emotune.synthetic.language import write_demo_data

    out = Path(args.out_dir)
    want = {"seed": args.seed, "shift_seed": args.seed + 100 if args.shift_seed is None else args.shift_seed}
    meta_file = out / "language.json"
    if meta_file.exists() and not args.force:
        meta = read_json(meta_file, "synthetic-language description")
        if all(meta.get(k) == v for k, v in want.items()) and (out / "tokenizer").exists():
            print(f"emotune synth: {out} already holds this language (seed {args.seed}); --force rewrites it")
            return 0
    meta = write_demo_data(out, seed=args.seed, shift_seed=args.shift_seed, n_pretrain=args.n_pretrain,
                           n_finetune=args.n_finetune, n_valid=args.n_valid, n_test=args.n_test,
                           n_icl_index=args.n_icl_index, n_icl_test=args.n_icl_test, vocab_size=args.vocab_size)
    print(f"emotune synth: wrote {out} ({meta['n_words']} words, {meta['n_pretrain']} pre-training and "
          f"{meta['n_finetune']} fine-tuning texts, tokenizer in {out / 'tokenizer'})")
    return 0
