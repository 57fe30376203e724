"""`python tests/codehop/embed_gate.py LIMIT ARGS...` runs `codehop ARGS...` with model2vec's
encoder holding every batch of documents past the first LIMIT chunks until the process dies.

test_serve uses it to freeze `codehop serve` mid-way through its background embedding (some
batches committed, the rest pending) for as long as the test looks, instead of slowing the
embedder down and hoping the partial state lasts long enough. A query (one text) always passes.
"""

import runpy
import sys
import threading

from model2vec import StaticModel

limit = int(sys.argv.pop(1))
passed = 0
counting = threading.Lock()
never = threading.Event()
encode = StaticModel.encode


def held_encode(self, sentences, *args, **kwargs):
    global passed
    if not isinstance(sentences, str) and len(sentences) > 1:  # a batch of documents
        with counting:
            over = passed + len(sentences) > limit
            if not over:
                passed += len(sentences)
        if over:
            never.wait()  # until SIGKILL
    return encode(self, sentences, *args, **kwargs)


StaticModel.encode = held_encode
sys.argv[0] = "codehop"
runpy.run_module("codehop", run_name="__main__", alter_sys=True)
