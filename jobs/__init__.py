"""The shared domain of facejobs: settings, tables, states, kinds and the artifact store."""
