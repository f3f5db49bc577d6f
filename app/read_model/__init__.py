"""The app's read model: what the pages make of the store's rows. Pure data: no torch, no SQLite, no Streamlit.

    progress      the plan of a run, its stages' states, how far it is and the time left
    series        which recorded series are per step, their labels (from the method's module), their order
    trace         one run's series as a live view reads them, a cursor at a time; smoothing and thinning
    runs          the runs table and the teachers a new run can reuse
    compare       one series of several runs on a chosen x axis
    sweeps        a sweep's rows, aggregates over seeds and the time a run will likely take
    method_table  the method table of finished runs, as the published tables print it
    seeds         seed-noise verdicts of a sweep's cells and of the configs picked on Compare
    lab           the Temperature lab's choice of samples
    sentences     a text run's soft labels as a table: one row and one probability bar per sentence

The store returns typed rows (`kdcore.store.MetricRow`, `RunMetricRow`, `LogRow`); these modules take
them (or any tuples in the same order) and return plain values the pages and `app.charts` draw.
"""
