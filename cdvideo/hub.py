"""`cdvideo push`: publish a concept folder as a Hugging Face Hub model repository."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from cdvideo import concept as concepts
from cdvideo.card import CARD_FILE, HUB_ID, refresh_model_card
from cdvideo.errors import UserError

# Resume state (optimizer moments), generated class images, validation stills and half-written
# temp files are the user's working material, not part of the published concept; the subject
# photos are the user's own pictures (kept for `cdvideo eval`), never published unasked.
IGNORE = ["checkpoints/**", "class-images/**", "photos/**", "validation/**", ".*", "**/.*"]


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    errors: tuple[type[BaseException], ...] = (OSError, HfHubHTTPError)
    # huggingface_hub >= 1.0 speaks httpx (>= 2.0: httpx2), whose errors are not OSErrors.
    for name in ("httpx", "httpx2"):
        try:
            errors += (importlib.import_module(name).HTTPError,)
        except (ImportError, AttributeError):
            pass
    return errors


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:240] if text else type(err).__name__


def push(
    concept: str | Path,
    repo_id: str,
    private: bool = False,
    api=None,
    say: Callable[[str], None] = print,
) -> str:
    """Refresh the model card, create `repo_id` if needed and upload the folder; returns the repo URL.

    `api` is a `huggingface_hub.HfApi` (default: one with the logged-in token).
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(concept)
    manifest = concepts.load_concept(folder)
    if not HUB_ID.fullmatch(repo_id):
        raise UserError(f"--repo-id {repo_id!r} should look like USER/NAME")
    api = api or HfApi()
    if not (api.token or get_token()):
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    # cdvideo's own card is rewritten so that it names the repo and shows any sample gif added since.
    if not refresh_model_card(folder, manifest, repo_id=repo_id):
        say(f"keeping your edited {folder / CARD_FILE}")
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            ignore_patterns=IGNORE,
            commit_message=f"cdvideo concept {manifest.token} ({manifest.class_word})",
        )
    except _network_errors() as err:
        raise UserError(f"could not push to {repo_id} (check the network and your token): {_one_line(err)}") from err
    say(f"pushed {folder} to {url}")
    return str(url)
