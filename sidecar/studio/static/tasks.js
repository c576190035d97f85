// A daemon task (a sweep, a dataset build: `sidecar` commands the daemon runs for the page) followed
// until it ends. Tasks send no events, so the page asks for it once a second; the caller draws each answer.
import { api } from "./api.js";

const POLL_MS = 1000;

// Calls onUpdate(task) with every answer until the task has ended (or stop() is called); returns stop.
export function followTask(taskId, onUpdate, onError) {
  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      const task = await api(`/tasks/${encodeURIComponent(taskId)}`);
      if (stopped) return;
      onUpdate(task);
      if (task.status === "running") timer = setTimeout(tick, POLL_MS);
    } catch (err) {
      if (stopped) return;
      if (err.code === "daemon_offline") timer = setTimeout(tick, POLL_MS * 2); // it comes back: keep asking
      else if (onError) onError(err);
    }
  }
  tick();
  return () => { stopped = true; clearTimeout(timer); };
}

// What the command running now does, in the artist's words (never the command itself).
const WORDS = [
  [/ dataset crop .*--auto/, "finding the figures on the reference images"],
  [/ dataset crop /, "cutting the figures into squares"],
  [/ dataset caption .*--auto/, "proposing captions"],
  [/ dataset caption /, "making the caption table"],
  [/ dataset flip /, "adding mirrored copies"],
  [/ dataset reg /, "drawing the regularisation set"],
  [/ loras sweep /, "drawing every checkpoint's images"],
];

export function stepWords(task) {
  const command = ` ${task.commands[task.step] || ""} `;
  const found = WORDS.find(([re]) => re.test(command));
  return found ? found[1] : "working";
}
