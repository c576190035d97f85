"""The page pipeline's generate stage: prompt files in, versioned page images, workflows and the
chapter's generation log out, rendered by the sidecar daemon. Entry point: `pipeline_stage.cli:main`."""
