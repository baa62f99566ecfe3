#!/usr/bin/env bash
# Run every runtime peer on SmolLM2-135M one after another (one heavy job at a time), then render the table.
#
#   bash benchmarks/llm_runtime_peers/run_all.sh            # full measurement (run it on an otherwise idle machine)
#   QUICK=1 bash benchmarks/llm_runtime_peers/run_all.sh    # validation: 2 windows, 8 decode steps (not results)
#   ROUNDS=3 bash benchmarks/llm_runtime_peers/run_all.sh   # every setting once per round, rounds in sequence;
#     the table shows the median of the rounds' timings (this VM's speed drifts by up to 30 % over minutes, so
#     one pass compares rows measured at different speeds); rounds after the first skip the perplexity.
#     FIRST_ROUND=2 adds rounds 2.. to the records of an earlier round 1 (runtime_*.r1.json)
#   PEERS="llamacpp ort qcompile" LLAMACPP_SETTINGS="q4_1 q4_0" QCOMPILE_SETTINGS="tvm_w4a8 ort_w4a8" \
#     QCOMPILE_PEER_ARTIFACT=out/llm/tvm_rotate_w4a8 RESULTS=benchmarks/results/x.md bash ...   # a subset
#
# From /work/main. Venvs: see README.md. Records: /work/peers/out/runtime_*.json; logs: /work/peers/runtime_logs/.
# A setting that fails writes a failed record (a process that crashes gets one from this driver) and the
# driver goes on. collect.py writes
# benchmarks/results/llm_runtime_smollm2.md (set RESULTS=path to write elsewhere).
set -u
cd "$(dirname "$0")/../.."
here=benchmarks/llm_runtime_peers
logs=/work/peers/runtime_logs
mkdir -p "$logs"
export OMP_NUM_THREADS=2
args=()
[ "${QUICK:-0}" = 1 ] && args=(--windows 2 --decode-steps 8 --warmup 1 --repeats 2)

echo "== $(date -u) load: $(cut -d' ' -f1-3 /proc/loadavg); busiest processes:"
ps -eo pid,pcpu,rss,comm --sort=-pcpu | head -5

run() {  # run VENV SCRIPT SETTING (VENV: a venv under /work/peers, or "qcompile" for this checkout's .venv)
    local venv=$1 script=$2 setting=$3
    local log="$logs/run_${script%.py}_${setting}.r$round.log"
    local python=/work/peers/$venv/bin/python
    local record="/work/peers/out/runtime_${script%_peer.py}_${setting}.json"
    local extra=()
    [ "$round" -gt 1 ] && extra=(--no-eval)
    [ "$venv" = qcompile ] && python=.venv/bin/python
    echo "== $(date -u +%H:%M:%S) round $round: $script --setting $setting ${args[*]} ${extra[*]} (log $log)"
    $python "$here/$script" --setting "$setting" "${args[@]}" "${extra[@]}" >"$log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then  # the process died (e.g. a segfault) before writing its record: record that
        python3 -c 'import json, sys; json.dump({"runtime": sys.argv[1], "setting": sys.argv[2], "failed": True,
            "error": "process exited with status " + sys.argv[3] + " (log " + sys.argv[4] + ")"}, open(sys.argv[5], "w"))' \
            "${script%_peer.py}" "$setting" "$rc" "$log" "$record"
    fi
    grep -E '"(prefill_tok_s_512|decode_tok_s_ctx128|decode_tok_s_ctx512|perplexity|error)"' "$log" | tr -s ' '
    if [ "${ROUNDS:-1}" -gt 1 ]; then mv -f "$record" "${record%.json}.r$round.json"; fi
}

wanted() { [[ " ${PEERS:-llamacpp ort ortgenai torch qcompile} " == *" $1 "* ]]; }  # PEERS="llamacpp ort": a subset

[ "${FIRST_ROUND:-1}" -le 1 ] && /work/peers/venv-ort/bin/python "$here/bandwidth.py" >"$logs/run_bandwidth.log" 2>&1 &&
    head -2 "$logs/run_bandwidth.log"
if wanted ortgenai && [ ! -f /work/peers/smollm2-hf/config.json ]; then
    /work/peers/venv-torch/bin/python "$here/make_hf_folder.py" >"$logs/make_hf_folder.log" 2>&1
fi
# QCOMPILE_SETTINGS (with QCOMPILE_PEER_ARTIFACT=FOLDER) runs qcompile's settings on another artifact folder
qsettings="tvm_w4a8 tvm_w4a8_f16head tvm_w4a8_i8head ort_w4a8 tvm_w4a4kv4_f16head ort_w4a4kv4 tvm_intact_w4a4kv4_f16head ort_intact_w4a4kv4"
for round in $(seq "${FIRST_ROUND:-1}" "${ROUNDS:-1}"); do
    if wanted llamacpp; then for setting in ${LLAMACPP_SETTINGS:-q4_1 q8_0 q4_0 q4_k_m f16}; do run venv-llamacpp llamacpp_peer.py "$setting"; done; fi
    if wanted ort; then for setting in ${ORT_SETTINGS:-fp32 nbits_acc4}; do run venv-ort ort_peer.py "$setting"; done; fi
    if wanted ortgenai; then for setting in ${ORTGENAI_SETTINGS:-fp32 int4}; do run venv-ortgenai ortgenai_peer.py "$setting"; done; fi
    if wanted torch; then run venv-torch torch_peer.py fp32; fi
    if wanted qcompile; then for setting in ${QCOMPILE_SETTINGS:-$qsettings}; do run qcompile qcompile_peer.py "$setting"; done; fi
done
/work/peers/venv-ort/bin/python "$here/collect.py" --output "${RESULTS:-benchmarks/results/llm_runtime_smollm2.md}" >/dev/null
echo "== $(date -u) done"
