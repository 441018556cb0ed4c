"""anogen.diffusion.load_embedding: a learned token in a plain diffusers pipeline, both families."""

import pytest
import torch

from anogen.diffusion import load_backbone, load_embedding
from anogen.diffusion.textual_inversion import save_learned_embedding
from anogen.diffusion.tiny import build_tiny_model
from anogen.errors import IntegrityError

TOKEN = "<anomaly>"
PROMPT = f"a photo of a {TOKEN} on the surface"


@pytest.fixture(scope="module", params=["ldm", "sd"])
def tiny(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"tiny-{request.param}") / "model"
    build_tiny_model(request.param, out, seed=0, resolution=64)
    return request.param, out


def _pipe(path):
    from diffusers import DiffusionPipeline

    # The tiny SD model leaves out the safety checker that model_index.json lists (never loaded here).
    index = (path / "model_index.json").read_text()
    kw = {"safety_checker": None} if "StableDiffusionPipeline" in index else {}
    return DiffusionPipeline.from_pretrained(str(path), **kw)


def _encoder(pipe):
    return pipe.text_encoder if hasattr(pipe, "text_encoder") and pipe.text_encoder is not None else pipe.bert


def _ids(pipe, prompt=PROMPT):
    return pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def _vector(pipe, seed=1):
    dim = _encoder(pipe).get_input_embeddings().weight.shape[1]
    return torch.randn(1, dim, generator=torch.Generator().manual_seed(seed))


def test_token_encodes_to_the_learned_vector(tiny, tmp_path):
    family, path = tiny
    pipe = _pipe(path)
    vector = _vector(pipe)
    save_learned_embedding(tmp_path / "learned_embeds.safetensors", TOKEN, vector)
    n_before = len(pipe.tokenizer)

    token_id = load_embedding(pipe, tmp_path / "learned_embeds.safetensors")

    assert len(pipe.tokenizer) == n_before + 1
    ids = _ids(pipe)
    positions = (ids[0] == token_id).nonzero().flatten().tolist()
    assert len(positions) == 1  # the token is kept whole, not split into word pieces
    embedded = _encoder(pipe).get_input_embeddings()(ids)
    assert torch.equal(embedded[0, positions[0]], vector[0])

    # the text encoder's output is the one AnoGen's stages compute with the same vector
    backbone = load_backbone(str(path))
    backbone.set_token_embedding(TOKEN, vector)
    with torch.no_grad():
        ours = backbone.encode_text(backbone.tokenize([PROMPT]))
        theirs = _encoder(pipe)(ids)[0]
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_reloading_replaces_the_vector_and_changes_the_encoding(tiny, tmp_path):
    _, path = tiny
    pipe = _pipe(path)
    a, b = _vector(pipe, 1), _vector(pipe, 2)
    save_learned_embedding(tmp_path / "a.safetensors", TOKEN, a)
    save_learned_embedding(tmp_path / "b.safetensors", TOKEN, b)
    id_a = load_embedding(pipe, tmp_path / "a.safetensors")
    with torch.no_grad():
        out_a = _encoder(pipe)(_ids(pipe))[0]
    n = len(pipe.tokenizer)
    id_b = load_embedding(pipe, tmp_path / "b.safetensors")
    assert id_a == id_b and len(pipe.tokenizer) == n
    assert torch.equal(_encoder(pipe).get_input_embeddings().weight[id_b], b[0])
    with torch.no_grad():
        out_b = _encoder(pipe)(_ids(pipe))[0]
    assert not torch.allclose(out_a, out_b)


def test_sd_matches_diffusers_load_textual_inversion(tmp_path):
    path = build_tiny_model("sd", tmp_path / "model", seed=0, resolution=64)
    ours, theirs = _pipe(path), _pipe(path)
    vector = _vector(ours)
    save_learned_embedding(tmp_path / "e.safetensors", TOKEN, vector)
    load_embedding(ours, tmp_path / "e.safetensors")
    theirs.load_textual_inversion(str(tmp_path / "e.safetensors"), token=TOKEN)
    assert torch.equal(_ids(ours), _ids(theirs))
    with torch.no_grad():
        assert torch.allclose(ours.text_encoder(_ids(ours))[0], theirs.text_encoder(_ids(theirs))[0])


def test_ldm_pipeline_generates_with_the_token(tmp_path):
    path = build_tiny_model("ldm", tmp_path / "model", seed=0, resolution=64)
    pipe = _pipe(path)
    save_learned_embedding(tmp_path / "e.safetensors", TOKEN, _vector(pipe))
    load_embedding(pipe, tmp_path / "e.safetensors")
    images = pipe(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=2.0,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 64, 64, 3)


def test_wrong_width_and_existing_word_are_refused(tiny, tmp_path):
    _, path = tiny
    pipe = _pipe(path)
    dim = _encoder(pipe).get_input_embeddings().weight.shape[1]
    save_learned_embedding(tmp_path / "wide.safetensors", TOKEN, torch.zeros(1, dim + 1))
    with pytest.raises(IntegrityError, match="learned on another model"):
        load_embedding(pipe, tmp_path / "wide.safetensors")
    word = next(t for t in pipe.tokenizer.get_vocab() if t.isalpha() and len(t) > 2)
    save_learned_embedding(tmp_path / "word.safetensors", word, torch.zeros(1, dim))
    with pytest.raises(ValueError, match="already a word"):
        load_embedding(pipe, tmp_path / "word.safetensors")
