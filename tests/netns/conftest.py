import pytest
from netns_lab import Lab


@pytest.fixture
def lab(request):
    """A fresh set of namespaces, removed (with everything in them) even when the test fails."""
    made = Lab()
    request.addfinalizer(made.close)
    return made
