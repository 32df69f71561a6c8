# Sourced by `make test` (and so by CI): finds the local services the store tests use and exports their URLs,
# unless the caller set them. A test whose service is missing is skipped with the reason.
if [ -z "${AEGIS_TEST_PG_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 \
    && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  export AEGIS_TEST_PG_URL="postgresql://postgres@127.0.0.1:5432/test"
fi
if [ -z "${AEGIS_TEST_REDIS_URL:-}" ] && command -v redis-cli >/dev/null 2>&1 \
    && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
  export AEGIS_TEST_REDIS_URL="redis://127.0.0.1:6379/15"
fi
