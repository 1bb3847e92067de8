"""The typed models: state words, tolerant generation fields, request validation and wire bodies."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from luma_prefect import Generation, GenerationRequest, GenerationState, parse_generation

# --- GenerationState ---------------------------------------------------------------------------

# Every spelling from relay-api.md, "States, normalised".
STATE_SPELLINGS = [
    *[(word, GenerationState.PENDING) for word in ("pending", "queued", "NOT_START")],
    *[(word, GenerationState.PENDING) for word in ("SUBMITTED", "QUEUED")],
    *[(word, GenerationState.PROCESSING) for word in ("processing", "dreaming", "IN_PROGRESS")],
    *[(word, GenerationState.PROCESSING) for word in ("running", "in_progress")],
    *[(word, GenerationState.COMPLETED) for word in ("completed", "SUCCESS", "success", "succeed")],
    *[(word, GenerationState.FAILED) for word in ("failed", "FAILURE", "failure")],
]


class TestGenerationState:
    @pytest.mark.parametrize(("word", "expected"), STATE_SPELLINGS)
    def test_every_relay_spelling_is_normalised(self, word: str, expected: GenerationState):
        """Each word a relay uses for a state maps to the normalised state."""
        assert GenerationState.from_relay(word) is expected

    @pytest.mark.parametrize("word", ["Completed", "  dreaming  ", "In_Progress"])
    def test_case_and_surrounding_space_do_not_matter(self, word: str):
        """Relays vary the case and pad words; the mapping must not depend on it."""
        assert GenerationState.from_relay(word) is not GenerationState.UNKNOWN

    @pytest.mark.parametrize("word", ["UNKNOWN", "cancelled", "", "paused", None, 3, {"a": 1}])
    def test_anything_else_is_unknown_and_not_terminal(self, word: object):
        """An unfamiliar word must not end a wait: it is `unknown`, which is not terminal."""
        state = GenerationState.from_relay(word)
        assert state is GenerationState.UNKNOWN
        assert not state.is_terminal

    @pytest.mark.parametrize(
        ("state", "terminal"),
        [
            (GenerationState.PENDING, False),
            (GenerationState.PROCESSING, False),
            (GenerationState.COMPLETED, True),
            (GenerationState.FAILED, True),
            (GenerationState.UNKNOWN, False),
        ],
    )
    def test_only_completed_and_failed_are_terminal(self, state: GenerationState, terminal: bool):
        """Waits stop on `completed` and `failed` only."""
        assert state.is_terminal is terminal

    def test_a_state_passes_through_unchanged(self):
        """Already-normalised states are accepted as they are."""
        assert GenerationState.from_relay(GenerationState.FAILED) is GenerationState.FAILED


# --- Generation: tolerant fields ---------------------------------------------------------------


class TestGenerationFields:
    def test_zero_time_means_unset(self):
        """The Go zero time `0001-01-01T00:00:00Z` is 'unset', not a date in year 1."""
        generation = Generation(id="g", state="pending", created_at="0001-01-01T00:00:00Z")
        assert generation.created_at is None

    def test_iso_time_with_z_is_parsed_as_utc(self):
        """Relays send `...Z` times; they become aware UTC datetimes."""
        generation = Generation(id="g", state="pending", created_at="2024-12-22T13:38:40.139Z")
        assert generation.created_at == datetime(2024, 12, 22, 13, 38, 40, 139000, timezone.utc)

    def test_unparseable_time_is_dropped_not_fatal(self):
        """A garbage time must not lose the whole generation."""
        assert Generation(id="g", state="pending", created_at="yesterday").created_at is None

    def test_width_and_height_as_strings_are_numbers(self):
        """Sizes sent as strings (or floats) still become ints."""
        generation = Generation.model_validate(
            {
                "id": "g",
                "state": "completed",
                "video": {"url": "https://cdn.example/v.mp4", "width": "1360", "height": 752.0},
            }
        )
        assert generation.video is not None
        assert (generation.video.width, generation.video.height) == (1360, 752)

    def test_garbage_width_is_none_and_the_asset_is_kept(self):
        """A bad size must not lose the asset."""
        generation = Generation.model_validate(
            {"id": "g", "state": "completed", "video": {"url": "https://x/v.mp4", "width": "wide"}}
        )
        assert generation.video is not None
        assert generation.video.url == "https://x/v.mp4"
        assert generation.video.width is None

    def test_unknown_fields_are_kept_in_raw(self):
        """Whatever the relay said that the model does not know stays available in `raw`."""
        body = {"id": "g", "state": "pending", "queue_state": "hot", "brand_new": {"x": [1]}}
        generation = parse_generation(body)
        assert generation.raw["brand_new"] == {"x": [1]}
        assert generation.raw == body

    def test_negative_estimate_is_dropped(self):
        """A negative or garbage wait estimate means nothing."""
        assert (
            Generation(id="g", state="pending", estimate_wait_seconds=-1).estimate_wait_seconds
            is None
        )
        assert (
            Generation(id="g", state="pending", estimate_wait_seconds="12").estimate_wait_seconds
            == 12
        )

    def test_best_video_url_prefers_the_no_watermark_links(self):
        """`best_video_url`: video_raw first, then video.download_url, then the watermarked url."""
        full = Generation.model_validate(
            {
                "id": "g",
                "state": "completed",
                "video": {"url": "https://x/wm.mp4", "download_url": "https://x/dl.mp4"},
                "video_raw": {"url": "https://x/raw.mp4"},
            }
        )
        assert full.best_video_url == "https://x/raw.mp4"
        assert full.model_copy(update={"video_raw": None}).best_video_url == "https://x/dl.mp4"
        only_url = Generation.model_validate(
            {"id": "g", "state": "completed", "video": {"url": "https://x/wm.mp4"}}
        )
        assert only_url.best_video_url == "https://x/wm.mp4"
        assert Generation(id="g", state="pending").best_video_url is None


# --- GenerationRequest: validation -------------------------------------------------------------


class TestGenerationRequestValidation:
    @pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "9:21"])
    def test_listed_aspect_ratios_are_accepted(self, ratio: str):
        """The aspect ratios every relay accepts are accepted."""
        assert GenerationRequest(prompt="a", aspect_ratio=ratio).aspect_ratio == ratio

    @pytest.mark.parametrize("ratio", ["16:10", "2:1", "16x9", ""])
    def test_other_aspect_ratios_are_refused(self, ratio: str):
        """An aspect ratio the relays reject is refused before anything is paid for."""
        with pytest.raises(ValidationError):
            GenerationRequest(prompt="a", aspect_ratio=ratio)

    def test_default_aspect_ratio_is_16_9(self):
        """The relays' default, 16:9, is the model's default."""
        assert GenerationRequest(prompt="a").aspect_ratio == "16:9"

    @pytest.mark.parametrize(
        "url",
        [
            "https://cdn.example/start.jpg",
            "http://cdn.example/start.jpg",
            "HTTPS://CDN.EXAMPLE/START.JPG",
            "data:image/png;base64,iVBORw0KGgo=",
            "data:image/jpeg;base64,/9j/4AAQ",
        ],
    )
    @pytest.mark.parametrize("field", ["image_url", "image_end_url"])
    def test_http_and_data_image_uris_are_accepted(self, field: str, url: str):
        """Frames may be http(s) URLs or base64 data:image URIs."""
        request = GenerationRequest(**{field: url})
        assert getattr(request, field) == url

    @pytest.mark.parametrize(
        "url",
        [
            "ftp://cdn.example/start.jpg",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "data:text/html;base64,PGgxPg==",
            "/local/start.jpg",
        ],
    )
    @pytest.mark.parametrize("field", ["image_url", "image_end_url"])
    def test_other_uris_are_refused(self, field: str, url: str):
        """Anything but http(s) or data:image is refused (no ftp, javascript, local files)."""
        with pytest.raises(ValidationError, match="http"):
            GenerationRequest(prompt="a", **{field: url})

    def test_callback_url_must_be_http(self):
        """The callback must be an http(s) URL."""
        with pytest.raises(ValidationError):
            GenerationRequest(prompt="a", callback_url="javascript:alert(1)")

    def test_prompt_or_image_is_required(self):
        """Neither a prompt nor an image: nothing to generate."""
        with pytest.raises(ValidationError, match="prompt or an image"):
            GenerationRequest()

    @pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
    def test_blank_prompt_counts_as_none(self, blank: str):
        """A blank prompt is no prompt: refused alone, dropped when an image is given."""
        with pytest.raises(ValidationError, match="prompt or an image"):
            GenerationRequest(prompt=blank)
        request = GenerationRequest(prompt=blank, image_url="https://x/a.jpg")
        assert request.prompt is None
        assert "user_prompt" not in request.to_wire("generations")

    def test_image_alone_is_enough(self):
        """An end image alone is a valid request too."""
        assert GenerationRequest(image_end_url="https://x/end.jpg").prompt is None

    def test_unknown_options_are_refused(self):
        """A misspelt option is an error, not silently ignored."""
        with pytest.raises(ValidationError):
            GenerationRequest(prompt="a", aspect="9:16")


# --- GenerationRequest: wire bodies ------------------------------------------------------------

FULL = GenerationRequest(
    prompt="  a red fox  ",
    aspect_ratio="9:16",
    expand_prompt=True,
    loop=False,
    image_url="https://x/start.jpg",
    image_end_url="https://x/end.jpg",
    model="ray-v2",
    resolution="720p",
    duration="5s",
    callback_url="https://hooks.example/luma",
)


class TestToWire:
    @pytest.mark.parametrize("style", ["generations", "task"])
    def test_relay_styles_use_relay_words(self, style: str):
        """Relay styles: user_prompt, notify_hook, model_name and the other fields as given."""
        assert FULL.to_wire(style) == {
            "user_prompt": "a red fox",
            "aspect_ratio": "9:16",
            "expand_prompt": True,
            "loop": False,
            "image_url": "https://x/start.jpg",
            "image_end_url": "https://x/end.jpg",
            "notify_hook": "https://hooks.example/luma",
            "model_name": "ray-v2",
            "resolution": "720p",
            "duration": "5s",
        }

    def test_official_style_uses_official_words_and_keyframes(self):
        """Official: prompt, model, keyframes frame0/frame1 as images, callback_url."""
        assert FULL.to_wire("official") == {
            "prompt": "a red fox",
            "model": "ray-v2",
            "aspect_ratio": "9:16",
            "loop": False,
            "keyframes": {
                "frame0": {"type": "image", "url": "https://x/start.jpg"},
                "frame1": {"type": "image", "url": "https://x/end.jpg"},
            },
            "callback_url": "https://hooks.example/luma",
            "resolution": "720p",
            "duration": "5s",
        }

    def test_official_extend_puts_the_generation_in_frame0(self):
        """Official extend: frame0 is `{"type": "generation", "id": ...}`."""
        body = GenerationRequest(prompt="more", image_end_url="https://x/end.jpg").to_wire(
            "official", extend_id="gen-1"
        )
        assert body["keyframes"] == {
            "frame0": {"type": "generation", "id": "gen-1"},
            "frame1": {"type": "image", "url": "https://x/end.jpg"},
        }

    def test_official_end_frame_alone(self):
        """Only an end image: frame1 only, no frame0."""
        body = GenerationRequest(prompt="a", image_end_url="https://x/end.jpg").to_wire("official")
        assert body["keyframes"] == {"frame1": {"type": "image", "url": "https://x/end.jpg"}}

    @pytest.mark.parametrize(
        ("style", "expected"),
        [
            ("generations", {"user_prompt": "cat dance", "aspect_ratio": "16:9"}),
            ("task", {"user_prompt": "cat dance", "aspect_ratio": "16:9"}),
            ("official", {"prompt": "cat dance", "aspect_ratio": "16:9"}),
        ],
    )
    def test_unset_options_are_left_out(self, style: str, expected: dict):
        """Options not set are not sent (no nulls, no empty keyframes)."""
        assert GenerationRequest(prompt="cat dance").to_wire(style) == expected

    def test_false_is_sent_not_dropped(self):
        """`False` is a set value, unlike `None`."""
        assert GenerationRequest(prompt="a", loop=False).to_wire("generations")["loop"] is False


# --- GenerationRequest: fingerprint ------------------------------------------------------------


class TestFingerprint:
    def test_equal_requests_have_equal_fingerprints(self):
        """Two equal requests, built separately, fingerprint the same."""
        one = GenerationRequest(prompt="a fox", aspect_ratio="1:1", loop=True)
        two = GenerationRequest(loop=True, aspect_ratio="1:1", prompt="a fox")
        assert one.fingerprint() == two.fingerprint()

    def test_prompt_padding_does_not_change_the_fingerprint(self):
        """The prompt is stripped first, so padding is not a different request."""
        assert (
            GenerationRequest(prompt="  a fox ").fingerprint()
            == GenerationRequest(prompt="a fox").fingerprint()
        )

    @pytest.mark.parametrize(
        "change",
        [
            {"prompt": "a cat"},
            {"aspect_ratio": "9:16"},
            {"loop": True},
            {"expand_prompt": False},
            {"image_url": "https://x/a.jpg"},
            {"model": "ray-v2"},
            {"callback_url": "https://hooks.example/"},
        ],
    )
    def test_different_requests_have_different_fingerprints(self, change: dict):
        """Any difference in what would be generated changes the fingerprint."""
        base = {"prompt": "a fox"}
        assert (
            GenerationRequest(**base).fingerprint()
            != GenerationRequest(**{**base, **change}).fingerprint()
        )

    def test_fingerprint_is_a_sha256_hex(self):
        """Stable text form: 64 hex characters."""
        fingerprint = GenerationRequest(prompt="a").fingerprint()
        assert len(fingerprint) == 64
        int(fingerprint, 16)


@pytest.mark.parametrize(
    ("word", "value"), [("relay's default", None), ("", None), ("on", True), ("off", False)]
)
def test_the_forms_words_for_expand_prompt(word: str, value: bool | None) -> None:
    """The form offers three words (no None toggle); each means what it says."""
    assert GenerationRequest(prompt="a", expand_prompt=word).expand_prompt is value
    schema = GenerationRequest.model_json_schema()["properties"]["expand_prompt"]
    assert schema["enum"] == ["relay's default", "on", "off"]


def test_expand_prompt_refuses_other_words() -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(prompt="a", expand_prompt="maybe")
