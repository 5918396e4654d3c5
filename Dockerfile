# syntax=docker/dockerfile:1.7
# Strata image: one image, two processes — `node dist/server.js` (API, default) and
# `node dist/worker.js` (BullMQ jobs). Build: docker build -t strata .

ARG NODE_IMAGE=node:22-bookworm-slim

# ---- deps: full dependency tree (dev included) for the TypeScript build -------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the only install scripts in the tree are the embedded-postgres binaries (unused when
# DATABASE_URL is set), msgpackr-extract (prebuilt, loaded without its script) and version notices.
RUN --mount=type=cache,target=/root/.npm \
    npm ci --no-audit --no-fund --ignore-scripts

# ---- build: compile src/ to dist/ ---------------------------------------------------------------------
FROM deps AS build
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- prod-deps: runtime dependencies only -------------------------------------------------------------
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --no-audit --no-fund --ignore-scripts

# ---- runtime ------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
# pg_dump/pg_restore for backups. Their major version must be >= the server's (compose runs 16), and
# bookworm ships 15, so the client comes from the PostgreSQL project's apt repository (PGDG).
ARG PG_MAJOR=16
ADD --chmod=644 https://www.postgresql.org/media/keys/ACCC4CF8.asc /usr/share/keyrings/pgdg.asc
RUN set -eux; \
    . /etc/os-release; \
    echo "deb [signed-by=/usr/share/keyrings/pgdg.asc] http://apt.postgresql.org/pub/repos/apt ${VERSION_CODENAME}-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list; \
    apt-get update; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*; \
    pg_dump --version

ENV NODE_ENV=production \
    PORT=3000 \
    HOST=0.0.0.0
WORKDIR /app

COPY --chown=root:root package.json package-lock.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
COPY openapi ./openapi

# The backup store's mount point, owned by the app user (a named volume copies this ownership).
RUN mkdir -p /var/lib/strata/backups && chown node:node /var/lib/strata/backups
# The base image's unprivileged user (uid 1000); the app files stay root-owned and read-only to it.
USER node

EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"]

CMD ["node", "--max-semi-space-size=8", "dist/server.js"]
