{% test unique_per_tenant(model, column_name) %}
select tenant_id, {{ column_name }}, count(*) as n
from {{ model }}
group by tenant_id, {{ column_name }}
having count(*) > 1
{% endtest %}
