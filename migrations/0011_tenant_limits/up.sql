-- Fair shares per tenant: a tenant's own limits (docs/limits.md). Keys absent from the object take the
-- configured defaults; the API validates names and ranges, the CHECK keeps the shape an object.
ALTER TABLE strata.tenants
  ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(limits) = 'object');
