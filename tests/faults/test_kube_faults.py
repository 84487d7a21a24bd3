"""``tokensidecar run`` with the ``kubernetes-secret`` source while the API server misbehaves.

The fake API server (kmock, over real HTTP, ``tests/fixtures/kube.py``) cuts watch streams
mid-event, answers 410 Gone again and again, slows down, and fails bursts of requests with
5xx. Through all of it the sidecar must end on the Secret's final state (no update lost
while the watch was broken), publish only values the Secret really held, in order, and
reconnect at a bounded rate (a tight reconnect loop would hammer a real API server).
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.test_kubernetes_secret import NAME
from tests.e2e.test_kubernetes_secret import sidecar as secret_sidecar
from tests.faults.sampler import FileSampler
from tests.fixtures.kube import KubeApi
from tests.sidecar_process import wait_for

CANARY = "hf_CANARYfaultsKubeWatch24680"


def _requests(kube_api: KubeApi) -> int:
    return kube_api.call(lambda: len(kube_api.store.requests))


def test_watch_cut_mid_event_never_loses_the_final_state(kube_api: KubeApi, tmp_path: Path) -> None:
    values = [CANARY, *(f"hf_faults_cut_{n:03d}" for n in range(40))]
    kube_api.put_secret(NAME, {"token": values[0]})
    with secret_sidecar(kube_api, tmp_path) as sidecar:
        sidecar.wait_for_token(values[0])
        kube_api.wait_for_watches(1)
        watches_before = kube_api.watch_requests
        with FileSampler(sidecar.token_file) as sampler:
            for number, value in enumerate(values[1:], start=1):
                kube_api.put_secret(NAME, {"token": value})
                if number % 2:
                    kube_api.drop_watches()  # the stream breaks while the event is on its way
                if number % 5 == 0:
                    time.sleep(0.05)  # sometimes the watch is down when the next update lands
            sidecar.wait_for_token(values[-1], timeout=15)
            time.sleep(0.3)
        reconnects = kube_api.watch_requests - watches_before
        logs_metrics = sidecar.get("/metrics")[1] + sidecar.get("/status")[1]
    sampler.assert_only(values)
    assert sidecar.token() == values[-1]
    drops = sum(1 for n in range(1, len(values)) if n % 2)
    assert reconnects <= 2 * drops + 2, f"{reconnects} watch requests for {drops} drops"
    assert CANARY not in sidecar.logs + logs_metrics


def test_finite_410_storm_relists_and_delivers_the_update_made_during_it(
    kube_api: KubeApi, tmp_path: Path
) -> None:
    kube_api.put_secret(NAME, {"token": "hf_faults_gone_before"})
    with secret_sidecar(kube_api, tmp_path) as sidecar:
        sidecar.wait_for_token("hf_faults_gone_before")
        kube_api.wait_for_watches(1)
        kube_api.compact()
        kube_api.inject_gone(15)
        kube_api.inject_gone(15, as_http=True)
        kube_api.drop_watches()
        kube_api.put_secret(NAME, {"token": CANARY})  # lands while the watch keeps expiring
        sidecar.wait_for_token(CANARY, timeout=15)
        kube_api.put_secret(NAME, {"token": "hf_faults_gone_after"})
        sidecar.wait_for_token("hf_faults_gone_after", timeout=10)
        assert sidecar.get("/healthz")[0] == 200
        text = sidecar.get("/metrics")[1] + sidecar.get("/status")[1]
    assert CANARY not in sidecar.logs + text


def test_persistent_410_storm_reconnects_at_a_bounded_rate(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.put_secret(NAME, {"token": "hf_faults_storm_before"})
    with secret_sidecar(kube_api, tmp_path) as sidecar:
        sidecar.wait_for_token("hf_faults_storm_before")
        kube_api.wait_for_watches(1)
        before = _requests(kube_api)
        kube_api.inject_gone(1_000_000)
        kube_api.drop_watches()
        time.sleep(3)
        during = _requests(kube_api) - before
        kube_api.inject_gone(0)
    # Same bound as for 5xx below: at most ~10 requests/s while the API server is broken.
    assert during <= 30, f"{during} requests in 3 s of 410 Gone"


def test_5xx_bursts_back_off_and_end_on_the_final_state(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.put_secret(NAME, {"token": "hf_faults_5xx_first"})
    with secret_sidecar(kube_api, tmp_path) as sidecar, FileSampler(sidecar.token_file) as sampler:
        sidecar.wait_for_token("hf_faults_5xx_first")
        kube_api.wait_for_watches(1)
        values = ["hf_faults_5xx_first"]
        for burst, status in enumerate((500, 503, 502, 429)):
            kube_api.fail_next(8, status=status)
            kube_api.drop_watches()
            value = CANARY if burst == 1 else f"hf_faults_5xx_burst_{burst}"
            values.append(value)
            kube_api.put_secret(NAME, {"token": value})  # written while reads fail
            sidecar.wait_for_token(value, timeout=20)
            assert sidecar.get("/healthz")[0] == 200

        # A persistent outage: every request fails for 4 s. The reconnect rate stays bounded.
        before = _requests(kube_api)
        kube_api.fail_next(1_000_000, status=503)
        kube_api.drop_watches()
        time.sleep(4)
        during = _requests(kube_api) - before
        assert sidecar.token() == values[-1]  # the last good token stays published
        kube_api.call(kube_api.store.faults.failures.clear)
        values.append("hf_faults_5xx_recovered")
        kube_api.put_secret(NAME, {"token": values[-1]})
        sidecar.wait_for_token(values[-1], timeout=15)
        wait_for(lambda: sidecar.status()["consecutive_failures"] == 0, timeout=5)
        text = sidecar.get("/metrics")[1] + sidecar.get("/status")[1]
    assert during <= 40, f"{during} requests in 4 s of 503s: the reconnect loop does not back off"
    sampler.assert_only(values)
    assert CANARY not in sidecar.logs + text


def test_slow_api_server_still_delivers_every_update_in_order(kube_api: KubeApi, tmp_path: Path) -> None:
    kube_api.put_secret(NAME, {"token": "hf_faults_slow_first"})
    with secret_sidecar(kube_api, tmp_path) as sidecar, FileSampler(sidecar.token_file) as sampler:
        sidecar.wait_for_token("hf_faults_slow_first")
        kube_api.wait_for_watches(1)
        kube_api.latency = 0.4  # every response, including each new watch, is 400 ms late
        values = ["hf_faults_slow_first"]
        for number in range(5):
            value = CANARY if number == 2 else f"hf_faults_slow_{number}"
            values.append(value)
            kube_api.put_secret(NAME, {"token": value})
            if number == 3:
                kube_api.drop_watches()  # reconnecting through the slow server
            sidecar.wait_for_token(value, timeout=10)
        kube_api.latency = 0.0
        text = sidecar.get("/metrics")[1] + sidecar.get("/status")[1]
    sampler.assert_only(values)
    assert CANARY not in sidecar.logs + text
