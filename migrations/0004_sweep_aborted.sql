-- Why a sweep pass stopped before its end: 'auth' (Basiq refused the API key) or 'database';
-- NULL when it ran to its end. `abort_error` is the error as logged (never a secret).
ALTER TABLE sweeps ADD COLUMN aborted TEXT CHECK (aborted IN ('auth', 'database'));
ALTER TABLE sweeps ADD COLUMN abort_error TEXT;
