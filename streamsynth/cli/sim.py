"""``streamsynth llm-sim``: the OpenAI-compatible simulator, in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer

from streamsynth.cli.errors import RUNTIME, USAGE, CliError
from streamsynth.engine.loop import run as run_loop


def llm_sim_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")
    ] = 8000,
    models: Annotated[str, typer.Option(help="Comma-separated model ids to serve.")] = "sim-model",
    latency: Annotated[
        str,
        typer.Option(help="Delay before each answer: fixed:S | uniform:LO:HI | lognormal:MED:P99."),
    ] = "fixed:0",
    token_rate: Annotated[
        float | None, typer.Option(min=0.001, help="Completion tokens/s added to the latency.")
    ] = None,
    rate_429: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of 429s.")] = 0.0,
    retry_after: Annotated[
        float, typer.Option(min=0.0, help="Retry-After seconds sent with 429s.")
    ] = 1.0,
    rate_500: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of 500s.")] = 0.0,
    rate_503: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of 503s.")] = 0.0,
    rate_hang: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of requests that hang --hang-s.")
    ] = 0.0,
    hang_s: Annotated[float, typer.Option(min=0.0, help="How long a hang lasts.")] = 30.0,
    rate_malformed: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of 200s with a malformed body.")
    ] = 0.0,
    rate_empty: Annotated[
        float, typer.Option(min=0.0, max=1.0, help='Share of 200s with "choices": [].')
    ] = 0.0,
    rpm_limit: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute before 429s.")
    ] = None,
    tpm_limit: Annotated[
        int | None, typer.Option(min=1, help="Tokens per minute before 429s.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
    serving: Annotated[
        bool,
        typer.Option(
            help="Capacity model instead of --latency: replicas with running slots, a "
            "waiting queue, prefill, batched decode and a prefix cache (vLLM-like)."
        ),
    ] = False,
    replicas: Annotated[
        int, typer.Option(min=1, help="--serving: replicas, on ports PORT, PORT+1, ...")
    ] = 1,
    max_num_seqs: Annotated[
        int, typer.Option(min=1, help="--serving: running sequences per replica.")
    ] = 256,
    decode_base_s: Annotated[
        float, typer.Option(min=0.0, help="--serving: decode step time of a batch of one.")
    ] = 0.008,
    decode_per_seq_s: Annotated[
        float, typer.Option(min=0.0, help="--serving: step time added per running sequence.")
    ] = 0.00006,
    prefill_s_per_token: Annotated[
        float, typer.Option(min=0.0, help="--serving: prefill time per uncached prompt token.")
    ] = 0.00002,
    cache_blocks: Annotated[
        int, typer.Option(min=0, help="--serving: prefix-cache size in 16-token blocks.")
    ] = 65_536,
    scheduling: Annotated[
        str, typer.Option(help="--serving: fcfs | priority (lower 'priority' runs first).")
    ] = "fcfs",
    max_waiting: Annotated[
        int | None,
        typer.Option(min=0, help="--serving: 429 beyond this many waiting (a gateway)."),
    ] = None,
) -> None:
    """Serve a simulated OpenAI-compatible LLM (latency, faults, rate limits) until Ctrl-C.

    Answers are deterministic functions of the prompt. Messages may carry markers such
    as [[sim:429]] or [[sim:latency=2]] to target one request. Endpoints:
    /v1/chat/completions, /v1/models, /stats, /health, and with --serving /metrics
    (vLLM's metric names, per replica).
    """
    from streamsynth.local.llm_simulator import (
        FaultConfig,
        LatencyModel,
        ServingConfig,
        SimulatorConfig,
        serve,
    )

    try:
        latency_model = LatencyModel.parse(latency)
    except ValueError as exc:
        raise CliError(f"--latency: {exc}", USAGE) from None
    latency_model.token_rate = token_rate
    model_ids = [m.strip() for m in models.split(",") if m.strip()]
    if not model_ids:
        raise CliError("--models: give at least one model id", USAGE)
    config = SimulatorConfig(
        host=host,
        port=port,
        models=model_ids,
        latency=latency_model,
        faults=FaultConfig(
            rate_429=rate_429,
            retry_after_s=retry_after,
            rate_500=rate_500,
            rate_503=rate_503,
            rate_hang=rate_hang,
            hang_s=hang_s,
            rate_malformed=rate_malformed,
            rate_empty_choices=rate_empty,
        ),
        seed=seed,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
    )
    if serving:
        if scheduling not in ("fcfs", "priority"):
            raise CliError("--scheduling: fcfs or priority", USAGE)
        config.serving = ServingConfig(
            replicas=replicas,
            max_num_seqs=max_num_seqs,
            decode_base_s=decode_base_s,
            decode_per_seq_s=decode_per_seq_s,
            prefill_s_per_token=prefill_s_per_token,
            cache_blocks=cache_blocks,
            scheduling="priority" if scheduling == "priority" else "fcfs",
            max_waiting=max_waiting,
        )
    try:
        run_loop(serve(config))  # uvloop where installed: the simulator stays cheap
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port} ({exc.strerror})", RUNTIME) from None
    except KeyboardInterrupt:
        pass
