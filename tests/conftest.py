"""What every test gets: no model hub, tests/ on the path (the shared builder modules), one thread for torch,
faiss and BLAS, and the tiny tokenizers and models built once per session (the `tiny_cache` fixture)."""

import os
import sys

import pytest

# No test may reach a model hub: everything runs offline on what the tests build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    """The end-to-end files first, each file's tests kept together and in order: with `pytest -n 2 --dist loadfile`
    (`make test`, with --no-loadscope-reorder) the long files start at once and the short ones fill the gaps, instead of a demo run
    starting last and running alone. The order is a fixed function of the collection, as xdist requires."""
    e2e_first = {item.path: 0 if "e2e" in item.path.parts else 1 for item in items}
    items.sort(key=lambda item: e2e_first[item.path])  # stable: the order within each group is pytest's


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One thread for torch, faiss (mauve-text's k-means) and BLAS (numpy's, under sklearn's PCA), from the session's
    start, so module- and session-scoped fixtures that build or train models get it too. Tiny models gain nothing
    from threads, and on a shared 2-core machine spinning OpenMP threads made them 20-300x slower (a 32-wide
    forward pass took 735 ms with two threads, 2.6 ms with one; an 80x384 SVD 2 s)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits  # scikit-learn depends on it

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture(autouse=True)
def _still_one_thread(one_thread):
    """Back to one torch thread after every test: a test (or the code under test) that changes it does not leak."""
    yield
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_leaked_rendezvous():
    """The launcher variables (MASTER_PORT, RANK, ...) as they were before each test: code under test that makes
    an in-process one-rank group sets them, and a later test's subprocess in the same worker must not inherit
    a port that group may still hold."""
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    before = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class TinyCache:
    """Tiny tokenizers and checkpoints built once per session per (kind, seed, size), under one session folder.
    `tokenizer(kind)` and `checkpoint(kind, ...)` give the folder's path: read-only, so copy it before writing into it.
    Kinds: "eval" (eval_builders: Metaspace BPE, LLaMA x 8), "generation" (generation_builders: LLaMA x 4, GPT-2)
    and "train" (train_builders: the training stage's own tokenizer with a pad token, LLaMA at the init)."""

    def __init__(self, root):
        self.root, self.built = root, {}

    def _once(self, key: tuple, build):
        if key not in self.built:
            path = self.root / "-".join(str(k) for k in key)
            build(path)
            self.built[key] = path
        return self.built[key]

    def tokenizer(self, kind: str):
        import eval_builders
        import generation_builders
        import train_builders

        build = {"eval": eval_builders.build_tokenizer, "generation": generation_builders.build_tokenizer,
                 "train": train_builders.make_tokenizer}[kind]
        return self._once(("tok", kind), build)

    def load_tokenizer(self, kind: str):
        """A fresh tokenizer object of `kind` (loaded from the session's folder: the caller may change it)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer(kind)))

    def checkpoint(self, kind: str, seed: int = 0, model: str = "llama", **size):
        """A saved tokenizer of `kind` and a model over it: model="llama" | "gpt2" (generation only); `size` goes to
        the preset builder (hidden=, layers=, scale=, ...)."""
        import shutil

        import eval_builders
        import generation_builders
        import train_builders
        from transformers import AutoTokenizer

        def build(path):
            shutil.copytree(self.tokenizer(kind), path)
            tok = AutoTokenizer.from_pretrained(str(path))
            if kind == "eval":
                eval_builders.build_llama(path, len(tok), seed=seed, **size)
            elif kind == "generation":
                (generation_builders.build_gpt2 if model == "gpt2" else generation_builders.build_llama)(path, len(tok), seed=seed, **size)
            else:
                train_builders.make_tiny_llama(path, tok, seed=seed, **size)

        assert model == "llama" or kind == "generation", (kind, model)
        return self._once(("ckpt", kind, model, seed, *sorted(size.items())), build)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> TinyCache:
    return TinyCache(tmp_path_factory.mktemp("tiny"))
