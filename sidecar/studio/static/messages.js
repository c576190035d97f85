// What an error means to the artist: every stable code the studio can meet (the daemon's error tree,
// sidecar/errors/, and the page's own `daemon_offline`) as one sentence in her words and, where there is
// one, the place in the studio that fixes it. The daemon's own messages are written for every client (a
// terminal, a script) and may name paths, routes or flags; the page shows them only for a code it does
// not know yet, with anything that looks like a path or a route taken out.

const DOCTOR = { label: "Open Doctor", href: "#/doctor" };
const LORAS = { label: "Open LoRAs", href: "#/loras" };
const NOW = { label: "Open Now", href: "#/now" };
const GENERATE = { label: "Open Generate", href: "#/generate" };
const PAGES = { label: "Open Pages", href: "#/pages" };

const field = (d) => (d && d.field ? ` (${d.field})` : "");
const named = (d, key, what) => (d && d[key] ? `${what} “${d[key]}”` : what);

// A training folder's build refused, by the field it names.
const BUILD_FIELDS = {
  sheets: "One of the reference images cannot be used: give each picture's full path, one a line, and no two with the same name.",
  out: "The new training folder must be a full path to a new or empty folder, in a folder that exists.",
  "reg.out": "The regularisation set's folder must sit beside the training folder.",
};

// code -> (details, status) => [sentence, fix?]
const MESSAGES = {
  daemon_offline: () => ["The daemon is not answering. The studio reconnects by itself as soon as it is back."],
  internal_error: () => ["The daemon ran into a problem of its own. Try again; if it happens again, its log says more."],
  daemon_unavailable: () => ["The daemon is starting or stopping. Try again in a moment."],
  bad_request: (d) => [`The studio sent something the daemon could not use${field(d)}. Reload the page and try again.`],
  invalid_json: () => ["The studio sent something the daemon could not read. Reload the page and try again."],
  unknown_field: (d) => [`This daemon does not know a setting the studio sent${field(d)}: it may be older than the studio. Restart it.`],
  invalid_field: (d, status, message) => [scrub(message) || `One value is not accepted${field(d)}: check the form.`],
  payload_too_large: () => ["That file is too large to send. Pick a smaller one."],
  unsupported_media_type: () => ["The studio sent something the daemon could not read. Reload the page and try again."],
  method_not_allowed: () => ["The daemon does not offer this here: it may be older than the studio. Restart it."],
  websocket_required: () => ["Live updates could not start. Reload the page."],
  not_found: () => ["That is no longer there: someone may have removed it. Reload the page."],
  forbidden: () => ["The daemon refused this."],
  conflict: () => ["Something changed meanwhile. Reload the page and try again."],
  unauthorized: () => ["This browser is not signed in to the daemon (its sign-in ended). Open the studio again from the terminal with “sidecar studio”."],
  host_not_allowed: () => ["The daemon refuses pages opened under this address. Open the studio from the terminal with “sidecar studio”."],
  origin_not_allowed: () => ["The daemon refuses requests from this page's address. Open the studio from the terminal with “sidecar studio”."],
  resolution_exceeds_profile: (d) => [`That size is larger than this machine can draw${d && d.limit ? ` (at most ${d.limit.maxWidth}×${d.limit.maxHeight})` : ""}. Choose a smaller width or height.`],
  batch_size_not_supported: () => ["This machine draws one image at a time. Use Variations for several."],
  lora_not_found: (d) => [`${named(d, "loraId", "The LoRA")} is not installed. Pick another, or promote a training run's file.`, LORAS],
  checkpoint_not_found: (d) => [`${named(d, "checkpoint", "The model")} is not in the models folder. The Doctor view says what is there.`, DOCTOR],
  controlnet_not_found: () => ["The pose model (ControlNet) is not in the models folder, so a pose image cannot be used. Remove the pose, or see Doctor.", DOCTOR],
  upscale_model_not_found: () => ["The print upscaler is not in the models folder. The Doctor view says how to add one.", DOCTOR],
  pose_image_invalid: () => ["That file cannot be used as a pose image: pick a PNG, JPEG or WebP picture (a stick figure, white on black)."],
  init_image_invalid: () => ["The image to start from cannot be read any more: render it again, then try More like this."],
  dataset_invalid: (d) => BUILD_FIELDS[d && d.field] ? [BUILD_FIELDS[d.field]]
    : ["That folder is not a training set yet: it needs images, each with a caption. Open it in Dataset to see what is missing.", { label: "Open Dataset", href: "#/dataset" }],
  dataset_not_ready: (d) => [`The training set is not ready: ${(d && d.findingCount) || "some"} problem(s) to fix first (listed under the form), or train anyway.`, { label: "Open Dataset", href: "#/dataset" }],
  character_invalid: () => ["The character's settings in the project cannot be read. Check the project's character file."],
  prompt_file_invalid: () => ["This page's prompt file cannot be read. Fix its text (or its front matter) and try again.", PAGES],
  page_project_missing: () => ["No project is open, so there are no pages to render into.", PAGES],
  tagger_invalid: () => ["The caption tagger cannot be loaded. The Doctor view says how to install it.", DOCTOR],
  node_not_supported: () => ["This workflow uses a step this engine cannot run. Render it with the settings instead."],
  sampler_not_supported: () => ["This sampler or scheduler is not available on this engine. Pick another."],
  workflow_invalid: () => ["The saved workflow cannot be used as it is. Render it again with the settings instead."],
  family_not_supported: () => ["This model's family (SD 1.5, SDXL or Flux) does not run on this machine. Pick another model, or a machine that runs it (Model families in the manual).", NOW],
  lora_family_mismatch: () => ["A LoRA made for another model family than the chosen model cannot apply to it. Pick a LoRA of the model's family, or another model."],
  no_backend_admits: () => ["No machine that may run this can take it now (off, or too small for this size). Pick another place to run it, or a smaller size.", NOW],
  remote_not_configured: () => ["Training on another machine is not set up in this daemon's settings."],
  execution_error: () => ["The engine stopped with an error while drawing this image. Try again; if it happens again, see Doctor.", DOCTOR],
  prompt_lost: () => ["The engine lost this job (it restarted meanwhile). Try again."],
  job_failed: () => ["This image could not be made. Try again."],
  interrupted: () => ["The daemon stopped before this finished. Resume continues it from its last saved step."],
  cancelled: () => ["Cancelled."],
  comfyui_unavailable: () => ["ComfyUI is not answering, so nothing can be drawn. The Doctor view says how to start it.", DOCTOR],
  engine_unavailable: () => ["The drawing engine is not ready. The Doctor view says what is missing.", DOCTOR],
  remote_unavailable: () => ["The training machine cannot be reached. Check that it is on, then Resume."],
  ollama_unavailable: () => ["Ollama is not running, so prompts cannot be refined. Start it (the Doctor view says how), then try again.", DOCTOR],
  ollama_model_missing: (d) => [`Ollama does not have ${named(d, "model", "the model it needs")} yet. The Doctor view says how to get it.`, DOCTOR],
  likeness_unavailable: () => ["The likeness judge has no model yet, so images cannot be compared with the character. The Doctor view says how to get it.", DOCTOR],
  references_missing: () => ["The character has no reference images yet, so likeness cannot be judged. Add a few pictures of the character to the project's reference set."],
  ollama_timeout: () => ["Ollama took too long to answer. Try again in a moment."],
  ollama_error: () => ["Ollama answered with an error. Try again; if it happens again, see Doctor.", DOCTOR],
  assistant_answer_invalid: () => ["The assistant's answer made no sense this time. Ask again, perhaps in other words."],
  database_unusable: () => ["The daemon's job list cannot be read. Restart the daemon; the Doctor view may say more.", DOCTOR],
  data_dir_locked: () => ["Another daemon is using the same data folder. Stop it first."],
  port_in_use: () => ["Another program already uses the daemon's port."],
  config_invalid: () => ["The daemon's settings file has a mistake. The Doctor view says which.", DOCTOR],
  job_not_found: () => ["That image is no longer in the daemon's list (old results are cleaned up)."],
  group_not_found: () => ["Those variations are no longer in the daemon's list."],
  preview_not_found: () => ["No preview yet."],
  training_not_found: () => ["That training run is no longer in the daemon's list."],
  backend_not_found: () => ["That rented backend is no longer rented (it was released or never started). The view now shows the backends there are."],
  storage_not_configured: () => ["No cloud bucket is set up, so this stays on this machine. Set one in the daemon's settings (Cloud storage in the manual)."],
  storage_unavailable: () => ["The cloud bucket cannot be reached right now, so nothing was moved. Check the connection and try again."],
  storage_refused: () => ["The cloud bucket refused the daemon's credentials, so nothing was changed. Check the credentials in the daemon's environment."],
  sync_conflict: () => ["Some files changed both here and in the cloud bucket, so they were left as they are on both sides. Keep one of each and sync again."],
  project_not_configured: () => ["No project is open. Start the daemon with a project folder to see its pages here."],
  version_not_found: () => ["That version of the page is no longer there. Reload the page."],
  project_path_outside: () => ["This file of the project leads outside the project folder (a link or a path elsewhere), so the studio does not open or write it. Replace the link with the file itself."],
  job_not_finished: () => ["That image is not finished yet. Wait for it, then try again."],
  invalid_state: () => ["That cannot be done in this state any more (it changed meanwhile). The view now shows how it is."],
  training_in_progress: () => ["A training run is using this machine: images are drawn again once it ends (or once you cancel it).", LORAS],
  lora_exists: () => ["A different LoRA already has this name. Give this one another name."],
  checkpoint_file_missing: () => ["That checkpoint file is no longer on disk: the run's folder may have been cleaned up."],
  generation_log_invalid: () => ["This chapter's generation log cannot be read. Fix or restore its file, then reload.", PAGES],
  concept_invalid: () => ["This concept's file in the project cannot be read (edited by hand?). Fix its text, or make a new concept."],
  concept_not_found: () => ["That concept is no longer in the project. Pick another, or make a new one.", { label: "Open Concept", href: "#/concept" }],
  concept_exists: () => ["A concept of that name already exists. Open it, or give the new one another name."],
  round_not_found: () => ["That round is no longer in the concept's intent. Reload the page."],
  prompt_file_exists: () => ["That page already has a prompt. Pick another page number (or change the page's prompt in Pages).", PAGES],
  prompt_file_changed: () => ["The page's prompt was changed elsewhere meanwhile. Reload it before writing."],
  queue_full: () => ["The queue is full. Wait for some images to finish, or cancel some.", NOW],
  disk_full: () => ["The disk is full. Free some space (old results, old training runs), then try again."],
  idempotency_key_reused: () => ["This was sent twice with different contents. Try again."],
  no_offer_under_limits: () => ["No rented machine is offered under your price limits. Raise the limits or try later."],
  http_error: (d, status) => [status >= 500 ? "The daemon had a problem with this. Try again; the Doctor view may say more." : "The daemon refused this.", status >= 500 ? DOCTOR : undefined],
};

// A message the daemon wrote for a terminal, with its paths, routes and flags taken out.
function scrub(message) {
  return String(message || "")
    .replace(/\b(GET|POST|PUT|DELETE)\s+\/\S*/g, "the studio")
    .replace(/(^|\s)--[a-z][\w-]*/g, " ")
    .replace(/(^|[\s(“"'])(~|\.{0,2})\/[^\s,;:)”"']+/g, "$1a file")
    .replace(/\s{2,}/g, " ")
    .trim();
}

// {text, fix?} for an error (an ApiError, a job's or a run's {code, message, details}, or an Error).
export function explain(err) {
  const code = err && err.code;
  const say = MESSAGES[code];
  if (say) {
    const [text, fix] = say(err.details || {}, err.status || 0, err.message);
    return { code, text, fix: fix || null };
  }
  return { code: code || "error", text: scrub(err && err.message) || "Something went wrong.", fix: null };
}

export const KNOWN_CODES = Object.keys(MESSAGES);
