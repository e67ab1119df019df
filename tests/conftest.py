"""Every test runs torch on one thread, as do the scripts the tests start (trainer_checks.ENV): tiny models gain
nothing from threads, a busy machine makes a second thread wait for a core, and runs compared bitwise across
processes must add up in the same order."""
import pytest
import torch


@pytest.fixture(scope='session', autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
