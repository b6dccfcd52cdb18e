// Request/reply over anywidget's custom messages.
//
// Every change to the ensemble is a command that the kernel applies and answers with
// {reply_to, ok, error?, ...}; the kernel then pushes the new state through the traitlets. A command
// whose reply never comes (kernel busy, dead or restarted) resolves with ok: false after a timeout,
// so the widget never waits forever.

const DEFAULT_TIMEOUT_MS = 60_000;

export function createCommander(model) {
  // Replies reach every view of the model: ids carry a per-view prefix so views never mix them up.
  const view = Math.random().toString(36).slice(2, 10);
  let nextId = 1;
  const pending = new Map();

  const onMessage = (msg) => {
    if (!msg || msg.reply_to == null) return;
    const entry = pending.get(msg.reply_to);
    if (!entry) return; // a reply that came after its timeout: already answered
    pending.delete(msg.reply_to);
    clearTimeout(entry.timer);
    entry.resolve(msg);
  };
  model.on("msg:custom", onMessage);

  function send(cmd, args = {}, timeoutMs = DEFAULT_TIMEOUT_MS) {
    const id = `${view}:${nextId++}`;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(id);
        resolve({
          reply_to: id,
          ok: false,
          error: `no reply from the kernel to '${cmd}' within ${Math.round(timeoutMs / 1000)} s: ` +
            "is it busy running another cell, or was it restarted? Re-run the cell that shows the builder.",
        });
      }, timeoutMs);
      pending.set(id, { resolve, timer });
      try {
        model.send({ id, cmd, args });
      } catch (err) {
        pending.delete(id);
        clearTimeout(timer);
        resolve({ reply_to: id, ok: false, error: `could not reach the kernel: ${err}` });
      }
    });
  }

  function dispose() {
    model.off("msg:custom", onMessage);
    for (const { timer } of pending.values()) clearTimeout(timer);
    pending.clear();
  }

  return { send, dispose };
}
