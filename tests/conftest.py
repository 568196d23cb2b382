"""What every test gets: no model hub, tests/ on the path (the shared builder modules), one thread for torch,
faiss and BLAS, and the tiny tokenizers and models built once per session (the `tiny` fixture)."""

import os
import sys

import pytest

# No test may reach a model hub: everything runs offline on what the tests build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def _one_blas_thread():
    """BLAS (numpy's, under sklearn's PCA) and faiss (mauve-text's k-means) with one thread for the session."""
    import faiss
    from threadpoolctl import threadpool_limits  # scikit-learn depends on it

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread(_one_blas_thread):
    """Tiny models gain nothing from threads, and on a shared 2-core machine torch's spinning OpenMP threads
    made them 20-300x slower (a 32-wide forward pass took 735 ms with two threads, 2.6 ms with one); set
    again before every test, since the code under test may change it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
