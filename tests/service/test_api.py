"""The /api/v1 contract under TestClient: cases, overlays, reviews, history, erasure, model card,
health and metrics, and the answers to a client's mistakes (4xx with a message, never 5xx)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image


def jpeg(colour=(180, 90, 60), size=(96, 128), **save) -> bytes:
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (*size, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def upload(api, data: bytes, token: str | None = None, **fields):
    return api.post("/api/v1/cases", headers=api.accounts.auth(token),
                    files={"image": ("mole.jpg", data, "image/jpeg")}, data=fields)


def test_create_case_answers_the_runtime_prediction(api, served_onnx):
    from skinedge.runtimes import load_runtime

    data = jpeg()
    response = upload(api, data, patient_ref="P-0042", body_site="back")
    assert response.status_code == 201, response.text
    case = response.json()
    expected = load_runtime(served_onnx).predict([Image.open(io.BytesIO(data))])[0]
    card = load_runtime(served_onnx).card
    by_code = {p["code"]: p["probability"] for p in case["probabilities"]}
    assert np.allclose([by_code[c] for c in card.classes], expected, atol=1e-5)
    probs = [p["probability"] for p in case["probabilities"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == len(card.classes)
    assert case["prediction"] == card.classes[int(np.argmax(expected))]
    assert case["top_k"] == [p["code"] for p in case["probabilities"][:3]]
    assert case["model"]["label"] == "onnx-fp32" and case["model"]["card_sha256"] == card.integrity
    assert case["status"] == "unreviewed" and case["review"] is None
    assert case["image"] == {"width": 128, "height": 96}
    assert case["patient_ref"] == "P-0042" and case["body_site"] == "back"
    assert case["latency_ms"] > 0 and case["id"].startswith("c_")
    malignant = {"mel", "bcc", "akiec"}
    mass = sum(p for c, p in zip(card.classes, expected) if c in malignant)
    assert case["malignant_probability"] == pytest.approx(mass, abs=1e-5)
    assert case["malignant"] == (case["prediction"] in malignant or mass >= 0.3)
    assert case["lesion_image"] is True and case["ood_score"] is None  # its card has no check


def test_a_picture_the_lesion_check_refuses_is_kept_without_a_diagnosis(make_settings,
                                                                         tiny_checkpoint,
                                                                         tmp_path):
    """A card whose check refuses every picture (max-softmax above -1): the case is stored
    with its probabilities, marked as not a lesion image, with the score that refused it."""
    import shutil

    from fastapi.testclient import TestClient

    from skinedge.evaluate.calibration import TemperatureFit, set_temperature
    from skinedge.models import load_card
    from skinedge.models.card import LesionCheck
    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    refusing = shutil.copytree(tiny_checkpoint, tmp_path / "refusing")
    card = load_card(refusing)
    set_temperature(refusing, TemperatureFit(**card.calibration),
                    ood=LesionCheck(method="msp", threshold=-1.0))
    settings = make_settings(model=refusing, explain=None)
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        auth = accounts.auth()
        case = client.post("/api/v1/cases", headers=auth,
                           files={"image": ("x.jpg", jpeg(), "image/jpeg")}).json()
        model = client.get("/api/v1/model", headers=auth).json()
        listed = client.get("/api/v1/cases", headers=auth).json()["items"]
        verify = client.post(f"/api/v1/cases/{case['id']}/review", headers=auth,
                             json={"action": "verify"})
        corrected = client.post(f"/api/v1/cases/{case['id']}/review", headers=auth,
                                json={"action": "correct", "label": card.classes[0]})
    assert verify.status_code == 422 and "no diagnosis" in verify.text
    assert corrected.status_code == 200, corrected.text  # a clinician may say what it is
    assert case["lesion_image"] is False and -1.0 < case["ood_score"] <= 0.0
    assert case["malignant"] is False  # no diagnosis, malignant or not
    assert len(case["probabilities"]) == len(card.classes)  # kept for the record
    assert listed[0]["lesion_image"] is False
    assert model["lesion_check"] is True and model["temperature"] == card.temperature


def test_review_history_and_erasure(api):
    first = upload(api, jpeg((200, 40, 40))).json()
    second = upload(api, jpeg((40, 200, 40))).json()
    other = next(c for c in ("nv", "mel", "bkl") if c != first["prediction"])
    reviewed = api.post(f"/api/v1/cases/{first['id']}/review", headers=api.accounts.auth(),
                        json={"action": "correct", "label": other, "note": "dermoscopy: regular"})
    assert reviewed.status_code == 200, reviewed.text
    review = reviewed.json()["review"]
    assert reviewed.json()["status"] == "corrected"
    assert (review["label"], review["note"], review["reviewer"]) == (other, "dermoscopy: regular",
                                                                      "dr-a")
    verified = api.post(f"/api/v1/cases/{second['id']}/review", headers=api.accounts.auth(),
                        json={"action": "verify"}).json()
    assert verified["status"] == "verified" and verified["review"]["label"] == second["prediction"]

    page = api.get("/api/v1/cases", headers=api.accounts.auth()).json()
    assert page["total"] == 2 and [c["id"] for c in page["items"]] == [second["id"], first["id"]]
    corrected = api.get("/api/v1/cases?status=corrected", headers=api.accounts.auth()).json()
    assert [c["id"] for c in corrected["items"]] == [first["id"]]
    by_label = api.get(f"/api/v1/cases?label={other}", headers=api.accounts.auth()).json()
    assert first["id"] in [c["id"] for c in by_label["items"]]
    one = api.get("/api/v1/cases?per_page=1&page=2", headers=api.accounts.auth()).json()
    assert [c["id"] for c in one["items"]] == [first["id"]] and one["total"] == 2

    assert api.delete(f"/api/v1/cases/{first['id']}", headers=api.accounts.auth()).status_code \
        == 204
    assert api.get(f"/api/v1/cases/{first['id']}", headers=api.accounts.auth()).status_code == 404
    assert api.get("/api/v1/cases", headers=api.accounts.auth()).json()["total"] == 1


def test_overlay_is_a_png_computed_once(api):
    case = upload(api, jpeg()).json()
    first = api.get(f"/api/v1/cases/{case['id']}/overlay", headers=api.accounts.auth())
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    overlay = Image.open(io.BytesIO(first.content))
    assert overlay.mode == "RGB" and min(overlay.size) >= 32
    again = api.get(f"/api/v1/cases/{case['id']}/overlay", headers=api.accounts.auth())
    assert again.content == first.content
    blobs = list((api.settings.data_dir / "blobs").glob("*/b_*"))
    assert len(blobs) == 2  # the image and one overlay, not two
    image = api.get(f"/api/v1/cases/{case['id']}/image", headers=api.accounts.auth())
    assert Image.open(io.BytesIO(image.content)).size == (128, 96)


def test_overlay_without_a_checkpoint_says_how_to_get_one(make_settings):
    from fastapi.testclient import TestClient

    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    settings = make_settings(explain=None)
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        case = client.post("/api/v1/cases", headers=accounts.auth(),
                           files={"image": ("a.jpg", jpeg(), "image/jpeg")}).json()
        response = client.get(f"/api/v1/cases/{case['id']}/overlay", headers=accounts.auth())
        assert response.status_code == 409 and "--explain CHECKPOINT" in response.json()["detail"]
        assert client.get("/api/v1/model", headers=accounts.auth()).json()["explain"] is False


def test_explain_checkpoint_of_another_model_is_refused(make_settings, teacher):
    """The teacher ensemble has the tiny checkpoint's classes but other weights."""
    from skinedge.errors import ModelError
    from skinedge.service.models import ServedModel

    with pytest.raises(ModelError, match="not the ones the served model was exported from"):
        ServedModel(make_settings(explain=teacher))


def test_exif_orientation_is_applied_and_metadata_not_kept(api):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    exif[0x010F] = "PhoneMaker"
    case = upload(api, jpeg(size=(96, 128), exif=exif.tobytes())).json()
    assert case["image"] == {"width": 96, "height": 128}  # upright: turned
    stored = api.get(f"/api/v1/cases/{case['id']}/image", headers=api.accounts.auth()).content
    image = Image.open(io.BytesIO(stored))
    assert not image.getexif() and "exif" not in image.info and "icc_profile" not in image.info


def test_model_card_me_health_ready_and_metrics(api):
    model = api.get("/api/v1/model", headers=api.accounts.auth()).json()
    assert model["label"] == "onnx-fp32" and model["explain"] is True
    assert {c["code"] for c in model["classes"] if c["malignant"]} == {"mel", "bcc", "akiec"}
    assert api.get("/api/v1/me", headers=api.accounts.auth()).json() == {"name": "dr-a",
                                                                          "role": "clinician"}
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready", "model": "onnx-fp32"}
    case = upload(api, jpeg()).json()
    api.get(f"/api/v1/cases/{case['id']}", headers=api.accounts.auth())
    api.request("BREW", "/api/v1/me")
    metrics = api.get("/metrics").text
    assert "skinedge_cases_created_total 1.0" in metrics
    assert 'route="/api/v1/cases"' in metrics and 'route="/api/v1/cases/{case_id}"' in metrics
    assert case["id"] not in metrics  # route templates, never ids
    assert 'method="other"' in metrics and "BREW" not in metrics


@pytest.mark.parametrize("data, status, words", [
    (b"not an image at all", 422, "not an image"),
    (jpeg()[:400], 422, "truncated"),
    (b"", 422, "the uploaded image"),
    (jpeg(size=(16, 16)), 422, "too small"),
])
def test_bad_images_get_a_4xx_that_says_why(api, data, status, words):
    response = upload(api, data)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
    assert "mole.jpg" not in response.json()["detail"]  # the client's file name is never echoed
    assert api.get("/api/v1/cases", headers=api.accounts.auth()).json()["total"] == 0


def test_sixteen_bit_and_cmyk_are_refused_with_the_conversion(api):
    out = io.BytesIO()
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(out, "PNG")
    sixteen = upload(api, out.getvalue())
    assert sixteen.status_code == 422 and "16-bit" in sixteen.json()["detail"]
    out = io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(out, "JPEG")
    cmyk = upload(api, out.getvalue())
    assert cmyk.status_code == 422 and "CMYK" in cmyk.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(make_settings):
    from fastapi.testclient import TestClient

    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    settings = make_settings(max_pixels=1_000_000)
    accounts = add_accounts(settings)
    out = io.BytesIO()
    Image.new("RGB", (2000, 1000), (120, 80, 60)).save(out, "PNG")  # tiny file, 2 MP
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/cases", headers=accounts.auth(),
                               files={"image": ("x.png", out.getvalue(), "image/png")})
    assert response.status_code == 422 and "decompression-bomb" in response.json()["detail"]


def test_upload_over_the_limit_is_413(make_settings):
    from fastapi.testclient import TestClient

    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    settings = make_settings(max_upload_mb=0.05)
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/cases", headers=accounts.auth(),
                               files={"image": ("x.jpg", b"\xff" * 200_000, "image/jpeg")})
    assert response.status_code == 413 and "0.05 MB" in response.json()["detail"]


@pytest.mark.parametrize("body, words", [
    ({"action": "correct"}, "needs the right class"),
    ({"action": "correct", "label": "zebra"}, "not one of the model's classes"),
    ({"action": "approve"}, "action"),
    ({"action": "verify", "extra": 1}, "extra"),
    ({"action": "correct", "label": "nv\u0000"}, "label"),
])
def test_bad_reviews_are_422_with_the_field(api, body, words):
    case = upload(api, jpeg()).json()
    response = api.post(f"/api/v1/cases/{case['id']}/review", headers=api.accounts.auth(),
                        json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


def test_verify_with_another_label_is_refused_not_dropped(api):
    case = upload(api, jpeg()).json()
    other = next(c for c in ("nv", "mel") if c != case["prediction"])
    response = api.post(f"/api/v1/cases/{case['id']}/review", headers=api.accounts.auth(),
                        json={"action": "verify", "label": other})
    assert response.status_code == 422 and "send action 'correct'" in response.json()["detail"]
    assert api.get(f"/api/v1/cases/{case['id']}", headers=api.accounts.auth()).json()[
        "status"] == "unreviewed"


def test_label_filter_takes_class_codes_only(api):
    response = api.get("/api/v1/cases?label=%00", headers=api.accounts.auth())
    assert response.status_code == 422 and "label" in response.json()["detail"]


def test_other_image_formats_are_refused_unread(api):
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 60)).save(out, "PCX")
    response = upload(api, out.getvalue())
    assert response.status_code == 422 and "JPEG, PNG" in response.json()["detail"]


def test_a_lost_file_is_a_503_without_server_paths(api):
    case = upload(api, jpeg()).json()
    for path in (api.settings.data_dir / "blobs").glob("*/b_*"):
        path.unlink()
    response = api.get(f"/api/v1/cases/{case['id']}/image", headers=api.accounts.auth())
    assert response.status_code == 503
    assert str(api.settings.data_dir) not in response.text and "administrator" in response.text


@pytest.mark.parametrize("path", ["/api/v1/cases/c_nope", "/api/v1/cases/c_..",
                                  "/api/v1/cases/c_%2E%2E%2Fetc", "/api/v1/cases/" + "x" * 500])
def test_unknown_case_ids_are_404(api, path):
    assert api.get(path, headers=api.accounts.auth()).status_code == 404


def test_rate_limit_per_token_is_429_with_retry_after(make_settings):
    from fastapi.testclient import TestClient

    from skinedge.service import create_app
    from tests.service.conftest import add_accounts

    settings = make_settings(rate_limit_per_minute=3)
    accounts = add_accounts(settings)
    with TestClient(create_app(settings)) as client:
        codes = [client.get("/api/v1/me", headers=accounts.auth()).status_code
                 for _ in range(4)]
        other = client.get("/api/v1/me", headers=accounts.auth(accounts.other_token))
        last = client.get("/api/v1/me", headers=accounts.auth())
    assert codes == [200, 200, 200, 429] and other.status_code == 200
    assert int(last.headers["retry-after"]) >= 1


def test_security_headers_and_closed_cors(api):
    response = api.get("/api/v1/me", headers={**api.accounts.auth(),
                                              "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    page = api.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers[
        "content-security-policy"]


def test_settings_refuse_a_wildcard_origin_and_unknown_keys(tmp_path):
    from skinedge.errors import ConfigError
    from skinedge.service.settings import load_settings

    config = tmp_path / "serve.yaml"
    config.write_text("model: m.onnx\ncors_origins: ['*']\nworkres: 2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    message = str(err.value)
    assert str(config) in message and "cors_origins" in message and "workres: unknown key" \
        in message


def test_environment_overrides_the_file_and_options_override_both(tmp_path, monkeypatch):
    from skinedge.service.settings import load_settings

    config = tmp_path / "serve.yaml"
    config.write_text("model: m.onnx\ntop_k: 2\nport: 9000\n")
    monkeypatch.setenv("SKINEDGE_TOP_K", "5")
    monkeypatch.setenv("SKINEDGE_PORT", "9100")
    settings = load_settings(config, port=9200)
    assert (settings.top_k, settings.port) == (5, 9200)


def test_openapi_spec_in_docs_is_current(api):
    from pathlib import Path

    spec = Path(__file__).parents[2] / "docs" / "openapi.json"
    live = api.get("/api/v1/openapi.json").json()
    assert spec.is_file(), "run `python scripts/openapi.py` to write docs/openapi.json"
    assert json.loads(spec.read_text()) == live, \
        "docs/openapi.json is stale: run `python scripts/openapi.py`"


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", [("openvino", "int8"), ("tflite", "fp32")])
def test_other_exported_formats_serve_the_same_answers(target, precision, tiny_checkpoint,
                                                       tmp_path):
    """The deployment formats (OpenVINO INT8, TFLite) serve through the same app: the case's
    probabilities are the artifact's own through load_runtime."""
    from fastapi.testclient import TestClient

    from skinedge.export import export_checkpoint
    from skinedge.runtimes import load_runtime
    from skinedge.service import ServeSettings, create_app
    from tests.service.conftest import add_accounts

    try:
        artifact = export_checkpoint(tiny_checkpoint, target, precision=precision,
                                     out_dir=tmp_path / "exports", verify_images=4,
                                     calibration_images=16).path
    except ImportError as exc:
        pytest.skip(f"{target} is not installed: {exc}")
    settings = ServeSettings(model=artifact, data_dir=tmp_path / "service",
                             rate_limit_per_minute=10_000)
    accounts = add_accounts(settings)
    data = jpeg((170, 60, 70))
    with TestClient(create_app(settings)) as client:
        case = client.post("/api/v1/cases", headers=accounts.auth(),
                           files={"image": ("a.jpg", data, "image/jpeg")}).json()
    runtime = load_runtime(artifact)
    expected = runtime.predict([Image.open(io.BytesIO(data))])[0]
    by_code = {p["code"]: p["probability"] for p in case["probabilities"]}
    assert case["model"]["label"] == f"{target}-{precision}"
    assert np.allclose([by_code[c] for c in runtime.card.classes], expected, atol=1e-5)
