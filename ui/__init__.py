"""Streamlit-aware helpers shared by the app's pages (state keys, widgets, job polling,
figure layout). This package and the page scripts are the only code that imports Streamlit;
everything they show is computed by the library (mixunlearn.*)."""
