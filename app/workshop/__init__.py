"""Workshop mode: one instructor, a room of participants, one shared server (on when KDLAB_WORKSHOP_TOKEN is set).

    policy       what a run from the room may ask of the server: no paths, registered names, a budget
    permissions  who may change which run: `Actor`, `can_change`, and the guarded cancel/resume/delete/submit
    room         the room in the run store: members and their keys, open/closed, challenge, room sweep, predictions
    leaderboard  the challenge's ranking and the room sweep's curve, from the store's runs (read model)
    lessons      the guided lessons: their presets and the pure numbers their pages draw
    access       the Streamlit side: who this browser session is (a key in the URL), bound to the above

Everything but `access` is free of Streamlit and tested on its own.
"""
