"""Batches read ahead on a background thread, so that reading, packing and transfer overlap the running step."""

import queue
import threading


class Prefetch:
  """Iterates `batches` on a background thread, `depth` batches ahead, each passed through `place` (host ->
  device), so that reading, packing and transfer overlap the running step instead of following it.

  `get_state()` is the wrapped iterator's state after the last batch handed out (not after the ones read
  ahead), so a checkpoint resumes exactly at the next batch the loop would have seen. An error or the end
  of the stream on the thread is raised by `next`, in order. Set the wrapped iterator's state before
  wrapping it; `close()` stops the thread.
  """

  def __init__(self, batches, place=lambda batch: batch, depth: int = 2):
    self._batches, self._place = batches, place
    self._state = batches.get_state()
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, name="longjax-prefetch", daemon=True)
    self._thread.start()

  def _fill(self):
    while not self._stop.is_set():
      try:
        batch = next(self._batches)
        item = (self._place(batch), self._batches.get_state(), None)
      except BaseException as error:  # noqa: BLE001 - StopIteration and data errors go to the consumer
        item = (None, None, error)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return

  def __iter__(self):
    return self

  def __next__(self):
    batch, state, error = self._queue.get()
    if error is not None:
      self._queue.put((None, None, error))  # the stream stays ended (or failed) for later calls
      raise error
    self._state = state
    return batch

  def get_state(self) -> dict:
    return self._state

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
