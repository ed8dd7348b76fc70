{#- The model is empty (e.g. a quarantine: any row in it is worth a look). -#}
{% test no_rows(model) %}
select * from {{ model }}
{% endtest %}
