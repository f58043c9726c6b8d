-- The datasets a load's duplicate rows belonged to (the row's and the catalogue's), so that
-- a dataset's consistency report lists only the loads that met duplicates of that dataset.
-- NULL for loads recorded before this column: the report scopes those by their recorded
-- conflicts.
ALTER TABLE loads ADD COLUMN duplicate_datasets integer[];
