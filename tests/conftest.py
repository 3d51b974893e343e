"""Makes tests/support.py and tests/ml_fixtures.py importable from every test folder, and
registers the shared ML fixtures (dataset, trained model) for all of them (tests/gpu too)."""
import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from ml_fixtures import generated_via_dataset, prepared_dataset, trained_model  # noqa: E402,F401
from store_fixtures import object_store  # noqa: E402,F401
