# Sourced by the check scripts (not run on its own).
#
# start_corral CONFIG LOG: starts `$corral serve --config CONFIG` in the
# background, its output in LOG and its pid appended to `pids`, and sets
# `url` to the address it prints once bound ("corral listening on URL").
# CONFIG listens on 127.0.0.1:0: the kernel picks a free port, so nothing
# can take it between choosing and binding. Fails (with the log on stderr)
# when corral exits or prints no address within 60 s.
start_corral() {
    "$corral" serve --config "$1" > "$2" 2>&1 &
    pids+=($!)
    url=""
    for _ in $(seq 1 300); do
        url="$(sed -n 's/^corral listening on //p' "$2" | head -n 1)"
        [ -n "$url" ] && return 0
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.2
    done
    cat "$2" >&2
    echo "corral printed no address (exited, or not within 60 s)" >&2
    return 1
}
