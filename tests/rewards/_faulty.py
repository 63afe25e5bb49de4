"""A stand-in for the math-verify worker function that misbehaves on purpose (imported inside worker processes)."""
import os
import time


def ok_or_misbehave(pred: str, gold: str, inner_timeout_s: int) -> bool:
    """True iff pred ends with 'ok'; but 'hang' sleeps past any deadline, 'crash' kills the worker, 'raise' raises,
    'alloc' allocates 512 MiB."""
    if pred == "hang":
        time.sleep(600)
    if pred == "crash":
        os._exit(3)
    if pred == "alloc":
        return len(bytearray(512 << 20)) > 0  # 512 MiB: MemoryError under a small memory_limit_mb
    if pred == "raise":
        raise RuntimeError("checker blew up")
    return pred.endswith("ok")
