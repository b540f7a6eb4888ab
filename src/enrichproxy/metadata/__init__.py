"""The enrichment tables: built from documents (table.py, pure) and kept in step with
MongoDB (store.py, the data path's only pymongo importer)."""
