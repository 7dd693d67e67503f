"""gc."""
import asyncio
import gc


def test_collect() -> None:
    open_loops = [o for o in gc.get_objects()
                  if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()]
    assert open_loops == []
