import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from spreadpref.config import JudgeSettings, ModelSettings, load_config
from spreadpref.data.tokenize import render_prompt_ids
from spreadpref.dpo.logprobs import score_sequences
from spreadpref.errors import ConfigError, JudgeError
from spreadpref.judges import make_judge
from spreadpref.judges.base import (
    Comparison,
    Judge,
    Judgement,
    agreement,
    bradley_terry,
    hard_preferences,
)
from spreadpref.judges.implicit import ImplicitJudge, implicit_score
from spreadpref.judges.llm import HTTPLLMJudge, LocalLLMJudge, judge_messages
from spreadpref.judges.reward_model import RewardModelJudge
from spreadpref.models.loading import load_model
from spreadpref.testing import make_tiny_model_dir, make_tiny_reward_model_dir

PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}]


def tiny(path):
    return load_model(ModelSettings(name_or_path=str(path))).eval()


# ---------------------------------------------------------------------------------------------
# preference matrices


def test_bradley_terry_matches_the_closed_form():
    prefer = bradley_terry([1.0, -0.5, 0.0], scale=2.0)
    assert prefer[0][1] == pytest.approx(1 / (1 + math.exp(-3.0)))
    assert prefer[1][0] == pytest.approx(1 - prefer[0][1])
    assert prefer[2][2] == 0.5


def test_hard_preferences_are_exact_with_ties_at_one_half():
    assert hard_preferences([0.5, 1.0, 0.5]) == [[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]]


class FixedJudge(Judge):
    def __init__(self, probabilities):
        self.probabilities = list(probabilities)

    def judge(self, comparisons):
        out = []
        for _ in comparisons:
            p = self.probabilities.pop(0)
            out.append(Judgement(scores=[p, 1 - p], prefer=[[0.5, p], [1 - p, 0.5]]))
        return out


def test_agreement_counts_ties_as_one_half():
    comparisons = [Comparison(prompt=PROMPT, replies=["a", "b"]) for _ in range(4)]
    assert agreement(FixedJudge([0.9, 0.2, 0.5, 0.7]), comparisons) == {"agreement": 2.5 / 4, "pairs": 4}


# ---------------------------------------------------------------------------------------------
# implicit


def test_implicit_judge_scores_log_ratios_and_prefers_by_beta(tmp_path, tiny_tokenizer):
    policy, reference = (
        tiny(make_tiny_model_dir(tmp_path / "p", seed=0)),
        tiny(make_tiny_model_dir(tmp_path / "r", seed=3)),
    )
    replies = ["4", "It is four, I think."]
    judgement = ImplicitJudge(policy, reference, tiny_tokenizer, beta=0.5).judge([Comparison(PROMPT, replies)])[0]
    prompt_ids = render_prompt_ids(tiny_tokenizer, PROMPT)
    judge = ImplicitJudge(policy, reference, tiny_tokenizer, beta=0.5)
    _, reply_ids = judge._token_ids(Comparison(PROMPT, replies))
    pad = tiny_tokenizer.pad_token_id
    pol, _ = score_sequences(policy, [prompt_ids] * 2, reply_ids, pad, progress=False)
    ref, _ = score_sequences(reference, [prompt_ids] * 2, reply_ids, pad, progress=False)
    expected = (pol - ref).tolist()  # the log-ratio s, beta-free
    assert judgement.scores == pytest.approx(expected, abs=1e-5)
    assert judgement.p(0, 1) == pytest.approx(1 / (1 + math.exp(0.5 * (expected[1] - expected[0]))), abs=1e-6)


def test_implicit_judge_of_a_model_against_itself_has_no_preference(tiny_model_dir, tiny_tokenizer):
    model = tiny(tiny_model_dir)
    judgement = ImplicitJudge(model, model, tiny_tokenizer, 0.1).judge([Comparison(PROMPT, ["4", "five"])])[0]
    assert judgement.scores == pytest.approx([0.0, 0.0], abs=1e-6)
    assert judgement.p() == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# reward model


def test_reward_model_judge_scores_like_a_direct_forward_and_ignores_padding(tmp_path):
    path = make_tiny_reward_model_dir(tmp_path / "rm")
    judge = RewardModelJudge(str(path), torch.device("cpu"), batch_size=3)
    comparisons = [
        Comparison(PROMPT, ["4", "The answer is four, of course, as everyone knows."]),
        Comparison([{"role": "user", "content": "Hi"}], ["Hello!", "Go away."]),
    ]
    batched = judge.judge(comparisons)
    one_by_one = RewardModelJudge(str(path), torch.device("cpu"), batch_size=1).judge(comparisons)
    for a, b in zip(batched, one_by_one):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    text = judge.render(PROMPT, "4")
    ids = judge.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        direct = judge.model(**ids).logits[0, 0].item()
    assert batched[0].scores[0] == pytest.approx(direct, abs=1e-5)
    s = batched[0].scores
    assert batched[0].p(0, 1) == pytest.approx(1 / (1 + math.exp(s[1] - s[0])))


def test_reward_model_judge_names_a_missing_model(tmp_path):
    with pytest.raises(JudgeError, match="judge.reward_model.name_or_path"):
        RewardModelJudge(str(tmp_path / "nowhere"), torch.device("cpu"))


def test_reward_model_kind_needs_a_model_name():
    with pytest.raises(ValueError, match="name_or_path"):
        JudgeSettings(kind="reward_model")


# ---------------------------------------------------------------------------------------------
# LLM-as-judge, local


def test_local_llm_judge_reads_the_answer_letter_and_left_padding_changes_nothing(tiny_model_dir, tiny_tokenizer):
    model = tiny(tiny_model_dir)
    judge = LocalLLMJudge(model, tiny_tokenizer, batch_size=4)
    questions = [judge_messages(PROMPT, "4", "five"), judge_messages(PROMPT, "a much longer reply " * 5, "4")]
    batched = judge.prob_first(questions)
    for question, p in zip(questions, batched):
        ids = torch.tensor([render_prompt_ids(tiny_tokenizer, question)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        a, b = judge.letter_ids
        assert p == pytest.approx(torch.softmax(logits[[a, b]], -1)[0].item(), abs=1e-5)


def test_pairwise_judge_asks_both_orders_and_is_consistent(tiny_model_dir, tiny_tokenizer):
    judge = LocalLLMJudge(tiny(tiny_model_dir), tiny_tokenizer)
    judgement = judge.judge([Comparison(PROMPT, ["4", "five", "no idea"])])[0]
    for a in range(3):
        assert judgement.prefer[a][a] == 0.5
        for b in range(3):
            assert judgement.prefer[a][b] + judgement.prefer[b][a] == pytest.approx(1.0)

    # Position bias cancels: a judge that always answers "A" prefers nothing.
    class AlwaysA(LocalLLMJudge):
        def prob_first(self, questions):
            return [1.0] * len(questions)

    biased = AlwaysA(tiny(tiny_model_dir), tiny_tokenizer).judge([Comparison(PROMPT, ["4", "five"])])[0]
    assert biased.p() == 0.5


# ---------------------------------------------------------------------------------------------
# LLM-as-judge over HTTP, against a stub OpenAI-compatible server


class StubServer:
    """Answers chat completions; ``script`` is a list of (status, body) popped per request."""

    def __init__(self, script=None, default=None):
        self.script, self.default, self.requests = list(script or []), default, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                stub.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
                )
                status, body = stub.script.pop(0) if stub.script else stub.default(stub.requests[-1]["body"])
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def logprob_answer(p_a):
    top = [{"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}]
    return {
        "choices": [
            {
                "message": {"content": "A" if p_a > 0.5 else "B"},
                "logprobs": {"content": [{"token": "A", "logprob": top[0]["logprob"], "top_logprobs": top}]},
            }
        ]
    }


def prefers_reply_with(word):
    """A judge that prefers whichever response contains ``word``, wherever it is shown."""

    def answer(body):
        text = body["messages"][-1]["content"]
        first = text.split("[Response A]")[1].split("[Response B]")[0]
        return 200, logprob_answer(0.8 if word in first else 0.2)

    return answer


@pytest.fixture
def stub():
    servers = []

    def start(**kwargs):
        servers.append(StubServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_http_judge_uses_logprobs_and_both_orders(stub, monkeypatch):
    server = stub(default=prefers_reply_with("four"))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    judge = HTTPLLMJudge(server.url, "judge-model", api_key_env="MY_JUDGE_KEY", concurrency=2)
    judgement = judge.judge([Comparison(PROMPT, ["five", "four"])])[0]
    assert judgement.p(1, 0) == pytest.approx(0.8)
    assert len(server.requests) == 2  # both orders
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert request["body"]["model"] == "judge-model" and request["body"]["max_tokens"] == 1


def test_http_judge_retries_server_errors_with_backoff(stub):
    server = stub(script=[(500, {"error": "busy"}), (429, {"error": "slow down"})], default=prefers_reply_with("4"))
    sleeps = []
    judge = HTTPLLMJudge(server.url, "m", max_retries=3, concurrency=1, sleep=sleeps.append)
    assert judge.prob_first([judge_messages(PROMPT, "4", "x")]) == [pytest.approx(0.8)]
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]


def test_http_judge_without_logprobs_reads_the_letter(stub):
    server = stub(default=lambda body: (200, {"choices": [{"message": {"content": "B"}}]}))
    assert HTTPLLMJudge(server.url, "m").prob_first([judge_messages(PROMPT, "a", "b")]) == [0.0]


def test_http_judge_refusal_names_the_key_variable_but_not_the_key(stub, monkeypatch):
    server = stub(default=lambda body: (401, {"error": "bad key"}))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    with pytest.raises(JudgeError, match="MY_JUDGE_KEY") as err:
        HTTPLLMJudge(server.url, "m", api_key_env="MY_JUDGE_KEY").prob_first([judge_messages(PROMPT, "a", "b")])
    assert "sk-secret-123" not in str(err.value)


def test_unreachable_endpoint_is_a_clear_error_after_the_retries():
    judge = HTTPLLMJudge("http://127.0.0.1:9/v1", "m", max_retries=2, timeout=2, sleep=lambda s: None)
    with pytest.raises(JudgeError, match=r"after 3 tries.*judge.llm.base_url"):
        judge.prob_first([judge_messages(PROMPT, "a", "b")])


def test_make_judge_builds_each_kind(tmp_path, tiny_model_dir, tiny_tokenizer, stub):
    model = tiny(tiny_model_dir)
    settings = ModelSettings(name_or_path=str(tiny_model_dir))
    assert isinstance(make_judge(JudgeSettings(), settings, policy=model, tokenizer=tiny_tokenizer), ImplicitJudge)
    assert isinstance(
        make_judge(JudgeSettings(kind="llm"), settings, policy=model, tokenizer=tiny_tokenizer), LocalLLMJudge
    )
    rm = make_tiny_reward_model_dir(tmp_path / "rm")
    judge = make_judge(JudgeSettings(kind="reward_model", reward_model={"name_or_path": str(rm)}), settings)
    assert isinstance(judge, RewardModelJudge)
    server = stub(default=prefers_reply_with("4"))
    http = make_judge(JudgeSettings(kind="llm", llm={"base_url": server.url, "api_model": "m"}), settings)
    assert isinstance(http, HTTPLLMJudge)
    with pytest.raises(ValueError, match="api_model"):
        JudgeSettings(kind="llm", llm={"base_url": server.url})


# ---------------------------------------------------------------------------------------------
# verifier


def test_verifier_judge_prefers_the_reply_meeting_more_constraints():
    pytest.importorskip("if_verifiable")
    from spreadpref.judges.verifier import VerifierJudge

    metadata = {
        "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
        "kwargs": [{}, {"keywords": ["garden"]}],
    }
    replies = ["My garden is green and calm.", "Well, my house is big.", "My garden, sadly, is small."]
    judgement = VerifierJudge().judge([Comparison(PROMPT, replies, "q1", metadata=metadata)])[0]
    assert judgement.scores == [1.0, 0.0, 0.5]
    assert judgement.p(0, 2) == 1.0 and judgement.p(1, 2) == 0.0 and judgement.p(1, 1) == 0.5


def test_verifier_judge_names_a_prompt_without_constraints():
    from spreadpref.judges.verifier import VerifierJudge

    with pytest.raises(JudgeError, match="'q9' has no verifiable constraints"):
        VerifierJudge().judge([Comparison(PROMPT, ["a", "b"], "q9")])


def test_http_judge_counts_unreadable_answers_as_ties(stub):
    server = stub(default=lambda body: (200, {"choices": [{"message": {"content": "Both are fine."}}]}))
    judge = HTTPLLMJudge(server.url, "m")
    assert judge.prob_first([judge_messages(PROMPT, "a", "b")]) == [0.5]
    assert judge.unparsed == 1


@pytest.mark.parametrize(
    "text, p", [("A", 1.0), ("b.", 0.0), (" Response A", 1.0), ("Both are fine.", 0.5), ("Answer: B", 0.5)]
)
def test_http_judge_reads_only_a_leading_letter(stub, text, p):
    server = stub(default=lambda body: (200, {"choices": [{"message": {"content": text}}]}))
    assert HTTPLLMJudge(server.url, "m").prob_first([judge_messages(PROMPT, "a", "b")]) == [p]


@pytest.mark.parametrize(
    "broken", [math.nan, math.inf, 0.5, "-0.1", None], ids=["nan", "inf", "positive", "text", "null"]
)
def test_a_broken_log_prob_is_a_failed_comparison_never_a_label(stub, broken):
    def answer(body):
        top = [{"token": "A", "logprob": broken}, {"token": "B", "logprob": math.log(0.3)}]
        content = [{"token": "B", "logprob": math.log(0.3), "top_logprobs": top}]
        return 200, {"choices": [{"message": {"content": "B"}, "logprobs": {"content": content}}]}

    judge = HTTPLLMJudge(stub(default=answer).url, "m")
    assert judge.prob_first([judge_messages(PROMPT, "a", "b")]) == [0.5]  # not "B wins"
    assert judge.unparsed == 1


def test_a_key_the_server_echoes_back_is_masked(stub, monkeypatch):
    def echo(body):
        return 400, {"error": f"invalid request from {server.requests[-1]['headers']['Authorization']}"}

    server = stub(default=echo)
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-echoed-456")
    with pytest.raises(JudgeError) as err:
        HTTPLLMJudge(server.url, "m", api_key_env="MY_JUDGE_KEY").prob_first([judge_messages(PROMPT, "a", "b")])
    assert "sk-secret-echoed-456" not in str(err.value) and "Bearer ***" in str(err.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/v1", "http://localhost:port/v1"])
def test_a_bad_port_is_named_when_the_config_loads_and_by_the_judge(url):
    with pytest.raises(ConfigError, match="port"):
        load_config(None, ["judge.kind=llm", f"judge.llm.base_url={url}", "judge.llm.api_model=m"])
    with pytest.raises(JudgeError, match="a port is 1 to 65535"):
        HTTPLLMJudge(url, "m")


def test_the_implicit_score_by_hand():
    """One function scores every reply, for the judge stage and the pluggable judge alike."""
    plain, per_token = JudgeSettings(), JudgeSettings(length_normalize=True)
    assert implicit_score(-10.0, -14.0, 4, plain) == pytest.approx(4.0)  # log pi - log pi_ref
    assert implicit_score(-10.0, -14.0, 4, per_token) == pytest.approx(1.0)  # per token: 4 / 4
    assert implicit_score(-10.0, None, 4, plain) == pytest.approx(-10.0)  # no reference: the policy alone
    mixed = JudgeSettings(base_weight=0.5)
    assert implicit_score(-10.0, -14.0, 4, mixed, base_logps=-6.0) == pytest.approx(0.0)  # ref term (-14 - 6) / 2
    with pytest.raises(JudgeError, match="non-finite judge score for reply 3"):
        implicit_score(float("nan"), -14.0, 4, plain, reply="reply 3")


def test_the_judge_command_refuses_a_reference_with_another_tokenizer(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from spreadpref.cli import app
    from spreadpref.testing import make_tiny_model_dir, make_tiny_tokenizer

    other = make_tiny_model_dir(tmp_path / "other")
    make_tiny_tokenizer(vocab_size=300).save_pretrained(other)  # same family, other ids
    generations = tmp_path / "generations.jsonl"
    generations.write_text("")
    out = tmp_path / "judged"
    result = CliRunner().invoke(
        app,
        ["judge", str(generations), "--reference", str(other), "-o", str(out), f"model.name_or_path={tiny_model_dir}"],
    )
    assert result.exit_code == 2, result.output
    assert "--reference" in result.output and "different tokenizer" in result.output
    assert not out.exists()  # refused before anything was written


def test_the_judge_command_refuses_generations_with_ids_past_the_vocabulary(tiny_model_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from spreadpref.cli import app

    row = {
        "prompt_id": "p0",
        "prompt_index": 0,
        "sample": 0,
        "prompt": [{"role": "user", "content": "Hi"}],
        "prompt_ids": [1, 2, 3],
        "reply_ids": [5, 99999],
        "text": "x",
        "num_tokens": 2,
        "finish_reason": "stop",
    }
    generations = tmp_path / "generations.jsonl"
    generations.write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(
        app, ["judge", str(generations), "-o", str(tmp_path / "judged"), f"model.name_or_path={tiny_model_dir}"]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 2, said
    assert "row 1" in said and "'reply_ids'" in said and "token id 99999" in said and "unexpected" not in said
