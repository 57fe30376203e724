"""A small real collection for the orchestrator tests: a few devdocs-style passages."""

from __future__ import annotations

import pytest

PASSAGES = {
    "pandas/read_csv.md": "pandas.read_csv reads a comma-separated values (csv) file into a DataFrame. "
                          "The sep argument sets the delimiter and header picks the row with column names.",
    "numpy/reshape.md": "numpy.reshape gives a new shape to an array without changing its data. "
                        "One shape dimension can be -1 and is then inferred.",
    "python/time.md": "time.strptime parses a string representing a time according to a format and "
                      "returns a struct_time.",
    "flask/routing.md": "Flask routes URLs to view functions with the route() decorator; variable parts "
                        "are written as <name> in the rule.",
    "matplotlib/hist.md": "matplotlib.pyplot.hist plots a histogram; bins sets the number of equal-width "
                          "bins and density normalises the area to one.",
}


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory):
    from index import Collection

    workspace = tmp_path_factory.mktemp("rag-ws")
    root = tmp_path_factory.mktemp("rag-docs")  # outside the workspace: Collection skips its own files
    for relative, text in PASSAGES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    collection = Collection.open(workspace, "docs")
    collection.add_paths([root], progress=False)
    yield collection
    collection.close()
