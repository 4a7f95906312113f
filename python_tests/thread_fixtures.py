"""The ``one_thread`` fixture: a module that imports it runs each of its tests on one thread.

Tiny models and fuzz-sized kernel calls run fastest on one thread and leave the shared cores
alone. It is autouse, so importing it (from here, or through ``eagle_fixtures``) is enough; it is
not in conftest.py, which would apply it to every test.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Sets torch to one thread for the test and restores the previous count after it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
